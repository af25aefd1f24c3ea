"""The depth preview figure (matplotlib, Agg): image | ground truth | prediction | |error|."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from dinotune.report.plots import plt


def _image_panel(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    image = np.asarray(image, np.float32)
    if image.ndim == 3 and image.shape[2] == 1:
        return image[..., 0], "gray"
    return (image[..., :3], None) if image.ndim == 3 else (image, "gray")


def depth_preview_figure(
    image: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    vrange: tuple[float, float] | None = None,
) -> Figure:
    """Both depth panels share one colour scale (near = bright) and one colour bar; pixels without ground
    truth are grey in the ground truth and error panels."""
    cmap = plt.get_cmap("magma_r").with_extremes(bad="#b0b0b0")
    if vrange is None:
        ref = target[valid] if target is not None and valid is not None and valid.any() else pred
        vrange = (float(np.nanmin(ref)), float(np.nanmax(ref)))
    panels = 4 if target is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.0), squeeze=False)
    shown, grey = _image_panel(image)
    axes[0, 0].imshow(np.clip(shown, 0, 1), cmap=grey)
    axes[0, 0].set_title("image")
    depth_panels = [("prediction", pred)] if target is None else [("ground truth", target), ("prediction", pred)]
    im = None
    for ax, (title, values) in zip(axes[0, 1:], depth_panels, strict=False):
        masked = np.ma.masked_where(~valid, values) if valid is not None and title == "ground truth" else values
        im = ax.imshow(masked, cmap=cmap, vmin=vrange[0], vmax=vrange[1])
        ax.set_title(title)
    fig.colorbar(im, ax=list(axes[0, 1 : 1 + len(depth_panels)]), shrink=0.8, label="depth (m)")
    if target is not None:
        hidden = ~valid if valid is not None else np.zeros(pred.shape, bool)
        err_cmap = plt.get_cmap("inferno").with_extremes(bad="#b0b0b0")
        em = axes[0, 3].imshow(np.ma.masked_where(hidden, np.abs(pred - target)), cmap=err_cmap, vmin=0)
        axes[0, 3].set_title("|error|")
        fig.colorbar(em, ax=axes[0, 3], shrink=0.8, label="m")
    for ax in axes[0]:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig
