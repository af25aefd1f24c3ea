"""Pictures of the feature space: a 2-D projection of pooled features and the patch-feature PCA.

The patch PCA is DINO's signature picture: one PCA is fitted on the patch features of all shown images
together, so the same colour means the same feature direction in every image, and its first three
components are min-max scaled to RGB.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.decomposition import PCA

from dinotune.data.formats import Sample
from dinotune.evaluation.predict import batches, model_transform
from dinotune.model import Classifier, ModelCard

__all__ = ["display_images", "feature_projections", "patch_pca"]


def feature_projections(features: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """{"PCA": (N, 2)} and, when the `umap` package is importable, {"UMAP": (N, 2)} too."""
    x = np.asarray(features, dtype=np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    out = {"PCA": PCA(n_components=2, random_state=seed).fit_transform(x)}
    if importlib.util.find_spec("umap") is not None and len(x) > 15:
        import umap

        out["UMAP"] = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, len(x) - 1)).fit_transform(x)
    return out


def _model_inputs(model: Classifier, card: ModelCard, samples: Sequence[Sample]):
    """Yield (normalised input batch, the same images de-normalised to HxWxC [0, 1] for display)."""
    transform = model_transform(model, card)
    mean = torch.tensor(transform.mean).view(1, -1, 1, 1)
    std = torch.tensor(transform.std).view(1, -1, 1, 1)
    for batch in batches(samples, transform, card, batch_size=16):
        x = batch["image"]
        yield x, list((x * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy())


def display_images(model: Classifier, card: ModelCard, samples: Sequence[Sample]) -> list[np.ndarray]:
    """The images as the model sees them (resized, cropped), HxWxC in [0, 1], for figures."""
    return [image for _, shown in _model_inputs(model, card, samples) for image in shown]


@torch.no_grad()
def patch_pca(
    model: Classifier, card: ModelCard, samples: Sequence[Sample]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """For each sample: the model-input image (HxWxC in [0, 1]) and its patch PCA map (h x w x 3).

    Uses the last block's normed patch features (`get_intermediate_layers(reshape=True)`), which both
    ViT and ConvNeXt backbones provide.
    """
    device = next(model.parameters()).device
    images, maps = [], []
    for x, shown in _model_inputs(model, card, samples):
        maps.append(model.backbone.get_intermediate_layers(x.to(device), n=1, reshape=True)[0].float().cpu())
        images.extend(shown)
    if not maps:
        return [], []
    fmap = torch.cat(maps)  # (B, D, h, w)
    b, d, h, w = fmap.shape
    tokens = fmap.permute(0, 2, 3, 1).reshape(-1, d).numpy()
    components = PCA(n_components=min(3, d, len(tokens)), random_state=0).fit_transform(tokens)
    if components.shape[1] < 3:
        components = np.pad(components, ((0, 0), (0, 3 - components.shape[1])))
    low, high = np.percentile(components, 1, axis=0), np.percentile(components, 99, axis=0)
    rgb = np.clip((components - low) / np.maximum(high - low, 1e-8), 0, 1).reshape(b, h, w, 3)
    return images, list(rgb)
