"""Small real datasets for the quickstart and tests, written to a folder the user chooses.

Nothing here is downloaded: the digits ship inside scikit-learn and the ELPV solar-cell images inside
the optional `elpv-dataset` package (CC BY-NC-SA 4.0, so they are only ever written to the user's
`dest`, never into this repository). Every writer is idempotent and atomic: it builds the dataset in
a temporary sibling folder, then renames it into place, and leaves a `.dinotune_dataset.json` marker.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dinotune.data.splits import stratified_split
from dinotune.errors import DataError

MARKER = ".dinotune_dataset.json"
SPLIT_FRACTIONS = {"val": 0.15, "test": 0.15}


def _atomic_build(dest: Path, params: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """Run `build(tmp)` and move tmp to dest, unless dest already holds a dataset built with `params`."""
    dest = Path(dest)
    marker = dest / MARKER
    if dest.exists():
        if not marker.is_file():
            raise DataError(f"{dest} exists but is not a dataset written by dinotune; choose another folder")
        try:
            if json.loads(marker.read_text(encoding="utf-8")) == params:
                return dest
        except (OSError, ValueError):
            pass  # damaged marker: rebuild
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        build(tmp)
        (tmp / MARKER).write_text(json.dumps(params), encoding="utf-8")
        if dest.exists():  # ours, built with other parameters: swap it out
            old = dest.with_name(f".{dest.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _split_names(labels: list[int], seed: int) -> list[str]:
    return stratified_split(labels, SPLIT_FRACTIONS, seed)


def digits_imagefolder(dest: Path | str, size: int = 32) -> Path:
    """scikit-learn's 1797 8x8 digits as an ImageFolder (train/val/test, 70/15/15, PNG at `size` px)."""
    from sklearn.datasets import load_digits

    def build(tmp: Path) -> None:
        digits = load_digits()
        names = _split_names([int(t) for t in digits.target], seed=0)
        for i, (img, label, split) in enumerate(zip(digits.images, digits.target, names, strict=False)):
            folder = tmp / split / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            pil = Image.fromarray((img * (255.0 / 16.0)).astype(np.uint8))
            pil.resize((size, size), Image.BILINEAR).save(folder / f"digit_{i:04d}.png")

    return _atomic_build(Path(dest), {"name": "digits", "size": size}, build)


def elpv_imagefolder(dest: Path | str, per_class: int | None = None, size: int = 112, seed: int = 0) -> Path:
    """ELPV solar cells as a binary ImageFolder: `functional` (p < 0.5) vs `defective` (p >= 0.5).

    `per_class` caps the images per class *in total* (then split 70/15/15, stratified), so
    `per_class=100` gives a balanced 200-image quickstart; None keeps all 2624 images (imbalanced).
    """
    try:
        import elpv_dataset
    except ImportError:
        raise DataError('the ELPV dataset is not installed; run: pip install "dinotune[elpv]"') from None
    data_dir = Path(elpv_dataset.__file__).parent / "data"
    labels_file = data_dir / "labels.csv"
    if not labels_file.is_file():
        raise DataError(f"{labels_file} is missing; reinstall with: pip install --force-reinstall elpv-dataset")

    def build(tmp: Path) -> None:
        rows = []
        for line in labels_file.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) >= 2:
                rows.append((parts[0], 1 if float(parts[1]) >= 0.5 else 0))
        rng = np.random.default_rng(seed)
        chosen: list[tuple[str, int]] = []
        for cls in (0, 1):
            items = [r for r in rows if r[1] == cls]
            order = rng.permutation(len(items))[: per_class or len(items)]
            chosen += [items[i] for i in sorted(order)]
        names = _split_names([c for _, c in chosen], seed)
        classes = ("functional", "defective")
        # provenance as .tsv, not .csv, so layout detection still sees a plain ImageFolder
        with open(tmp / "SOURCES.tsv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(["source", "class", "split"])
            for (src, cls), split in zip(chosen, names, strict=False):
                folder = tmp / split / classes[cls]
                folder.mkdir(parents=True, exist_ok=True)
                with Image.open(data_dir / src) as im:
                    im.convert("L").resize((size, size), Image.BILINEAR).save(folder / Path(src).name)
                writer.writerow([src, classes[cls], split])
        (tmp / "LICENSE.txt").write_text(
            "ELPV dataset images: CC BY-NC-SA 4.0, (c) Buerhop-Lutz, Deitsch et al.; "
            "https://github.com/zae-bayern/elpv-dataset\n",
            encoding="utf-8",
        )

    params = {"name": "elpv", "per_class": per_class, "size": size, "seed": seed}
    return _atomic_build(Path(dest), params, build)


def _dilate(mask: np.ndarray, r: int = 1) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
    return out


SEG_PALETTE = [(0, 0, 0)] + [
    tuple(int(v) for v in c)
    for c in (
        np.array(
            [
                [230, 25, 75],
                [60, 180, 75],
                [255, 225, 25],
                [0, 130, 200],
                [245, 130, 48],
                [145, 30, 180],
                [70, 240, 240],
                [240, 50, 230],
                [210, 245, 60],
                [250, 190, 212],
            ]
        )
    )
]


def make_segmentation_dataset(dest: Path | str, n_images: int, size: int = 64, seed: int = 0) -> Path:
    """Digits pasted on noisy canvases with pixel masks: class = digit + 1, background 0, and a 1-px
    ring of 255 (ignore) around each digit. Writes images/{train,val}/ + masks/{train,val}/ (palette
    PNG) and classes.yaml; 80/20 split.
    """
    from sklearn.datasets import load_digits

    if n_images < 2:
        raise DataError("make_segmentation_dataset needs n_images >= 2 (one train, one val)")

    def build(tmp: Path) -> None:
        digits = load_digits()
        rng = np.random.default_rng(seed)
        cell = max(8, size // 2)
        n_val = max(1, round(n_images * 0.2))
        palette = [v for c in SEG_PALETTE for v in c] + [255, 255, 255] * (256 - len(SEG_PALETTE))
        for i in range(n_images):
            split = "val" if i >= n_images - n_val else "train"
            image = rng.normal(0.15, 0.05, (size, size, 3)).clip(0, 1)
            mask = np.zeros((size, size), dtype=np.uint8)
            for cy in range(0, size - cell + 1, cell):
                for cx in range(0, size - cell + 1, cell):
                    if rng.random() < 0.4:
                        continue
                    k = int(rng.integers(len(digits.images)))
                    glyph = Image.fromarray((digits.images[k] * 15).astype(np.uint8)).resize(
                        (cell - 2, cell - 2), Image.BILINEAR
                    )
                    g = np.asarray(glyph, dtype=np.float32) / 240.0
                    fg = np.zeros((size, size), dtype=bool)
                    fg[cy + 1 : cy + cell - 1, cx + 1 : cx + cell - 1] = g > 0.35
                    ring = _dilate(fg) & ~fg & (mask == 0)
                    colour = np.array(SEG_PALETTE[int(digits.target[k]) + 1]) / 255.0 * 0.8 + 0.2
                    image[fg] = colour * rng.uniform(0.8, 1.0)
                    mask[ring] = 255
                    mask[fg] = int(digits.target[k]) + 1
            for sub in ("images", "masks"):
                (tmp / sub / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray((image * 255).astype(np.uint8)).save(tmp / "images" / split / f"seg_{i:04d}.png")
            m = Image.fromarray(mask)
            m.putpalette(palette)
            m.save(tmp / "masks" / split / f"seg_{i:04d}.png")
        lines = ["classes:", "  - {name: background, color: [0, 0, 0]}"]
        lines += [f"  - {{name: digit_{d}, color: {list(SEG_PALETTE[d + 1])}}}" for d in range(10)]
        (tmp / "classes.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")

    params = {"name": "segmentation_digits", "n_images": n_images, "size": size, "seed": seed}
    return _atomic_build(Path(dest), params, build)
