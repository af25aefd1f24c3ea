"""Image folders for the probe benchmarks: ELPV (elpv-dataset) and Fashion-MNIST (Debian's dataset package).

Fashion-MNIST is read from `/usr/share/datasets/fashion-mnist` (`apt-get install dataset-fashion-mnist`);
where it is missing, scikit-learn's digits stand in and the result says so. Each seed draws its own
train/val/test images, so "3 split seeds" are three different splits of the pool.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def _idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def _pool() -> tuple[str, tuple[str, ...], np.ndarray, np.ndarray]:
    """(name, class names, images (N, H, W) uint8, labels (N,)): Fashion-MNIST's 70k, else digits."""
    if (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        images = [_idx(FASHION_DIR / f"{s}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28) for s in ("train", "t10k")]
        labels = [_idx(FASHION_DIR / f"{s}-labels-idx1-ubyte.gz", 8) for s in ("train", "t10k")]
        return "Fashion-MNIST", FASHION_CLASSES, np.concatenate(images), np.concatenate(labels)
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 255 / 16).astype(np.uint8)
    return "scikit-learn digits (Fashion-MNIST not installed)", tuple(map(str, range(10))), images, digits.target


def small_image_folder(dest: Path, seed: int, counts: dict[str, int]) -> tuple[Path, str]:
    """An ImageFolder `dest/{train,val,test}/<class>/` with `counts[split]` images drawn with `seed`."""
    name, classes, images, labels = _pool()
    order = np.random.default_rng(seed).permutation(len(labels))
    start = 0
    for split, count in counts.items():
        count = min(count, len(order) - start)
        for i in order[start : start + count]:
            folder = dest / split / classes[labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(folder / f"{i:05d}.png")
        start += count
    return dest, name


def mosaic_folder(dest: Path, seed: int, counts: dict[str, int], grid: int = 2) -> tuple[Path, str]:
    """A multi-label dataset: `grid` x `grid` mosaics of pool images, labelled with the set of classes shown.

    Each mosaic shows 1 to grid^2 tiles (how many drawn uniformly) in random cells, the other cells black;
    each tile is a random pool image, drawn without replacement, so a class may appear twice (it is one
    label). Written as `dest/images/*.png` plus `dest/labels.csv` (`file,labels,split`, labels `a;b`), the
    CSV layout of docs/data.md. Every split draws from its own part of the pool.
    """
    name, classes, images, labels = _pool()
    rng = np.random.default_rng(seed)
    order = iter(rng.permutation(len(labels)))
    side = images.shape[1]
    (dest / "images").mkdir(parents=True, exist_ok=True)
    rows = ["file,labels,split"]
    for split, count in counts.items():
        for m in range(count):
            canvas = np.zeros((grid * side, grid * side), dtype=np.uint8)
            cells = rng.permutation(grid * grid)[: rng.integers(1, grid * grid + 1)]
            shown = set()
            for cell in cells:
                i = next(order)
                r, c = divmod(int(cell), grid)
                canvas[r * side : (r + 1) * side, c * side : (c + 1) * side] = images[i]
                shown.add(classes[labels[i]])
            file = f"{split}{m:05d}.png"
            Image.fromarray(canvas).save(dest / "images" / file)
            rows.append(f"images/{file},{';'.join(sorted(shown))},{split}")
    (dest / "labels.csv").write_text("\n".join(rows) + "\n")
    return dest, f"{name} {grid}x{grid} mosaics"
