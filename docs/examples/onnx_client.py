"""Classify images with a dinotune ONNX export using only numpy, Pillow and onnxruntime.

Everything comes from the export's card (model.json): which graph to run and its sha256, and every
preprocessing step (`input_spec`): decode, channels, intensity, resize, crop/pad, normalise, the size
rule and softmax or sigmoid. Its answers equal `dinotune predict` (tests/export/test_client.py checks
within 1e-3 in probability). Covers 8/16-bit and float images with 1 or 3 channels and the crop and
pad resize modes; TIFF stacks, DICOM, NIfTI and segmentation are left to dinotune itself.

    python onnx_client.py EXPORT_FOLDER IMAGE [IMAGE ...] [--top-k 3] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def load_export(folder: Path) -> tuple[dict, ort.InferenceSession]:
    """The card and a session on the graph it serves, refused when the file's sha256 differs."""
    card = json.loads((folder / "model.json").read_text())
    if card["task"] not in ("classify", "multilabel"):
        sys.exit(f"{folder}: this example classifies; the export's task is {card['task']}")
    graph = folder / card["head"]["file"]
    expected = card.get("files", {}).get(graph.name, {}).get("sha256")
    if expected and hashlib.sha256(graph.read_bytes()).hexdigest() != expected:
        sys.exit(f"{graph}: sha256 differs from model.json; the file was changed after export")
    return card, ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])


def decode(path: Path) -> np.ndarray:
    """HxWxC in the file's own dtype: EXIF orientation applied, palette/alpha/CMYK to RGB or L."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("LA", "La", "1"):
            image = image.convert("L")
        elif image.mode in ("RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"):
            image = image.convert("RGB")
        array = np.asarray(image).astype(np.uint16) if image.mode.startswith("I;16") else np.asarray(image)
    return array[:, :, None] if array.ndim == 2 else array


def match_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """The card's channel rule, applied in the file's dtype (before intensity scaling)."""
    have = array.shape[2]
    if have == channels:
        return array
    if channels == 3 and have in (1, 2):
        return np.repeat(array[:, :, :1], 3, axis=2)
    if channels == 3 and have == 4:
        return array[:, :, :3]
    if channels == 1 and have in (3, 4):
        return (array[:, :, :3].astype(np.float32) @ LUMA)[:, :, None].astype(array.dtype)
    if channels == 1 and have == 2:
        return array[:, :, :1]
    sys.exit(f"image has {have} channels; the model takes {channels}")


def to_unit(array: np.ndarray, scaling: dict) -> np.ndarray:
    """float32 in [0, 1] by the card's intensity rules (the ones PIL-readable files can need)."""
    if scaling.get("mode") == "percentile":
        low, high = np.asarray(scaling["low"], np.float32), np.asarray(scaling["high"], np.float32)
        out = (array.astype(np.float32) - low) / (high - low)
    elif scaling.get("mode") == "per_image":
        data, out = array.astype(np.float32), np.zeros(array.shape, np.float32)
        for c in range(data.shape[2]):
            lo, hi = np.percentile(data[..., c], scaling.get("percentiles", (1.0, 99.8)))
            out[..., c] = (data[..., c] - lo) / (hi - lo if hi > lo else 1.0)
    elif array.dtype == np.uint8:
        out = array.astype(np.float32) / 255.0
    elif scaling.get("divisor"):
        out = array.astype(np.float32) / float(scaling["divisor"])
    elif np.issubdtype(array.dtype, np.unsignedinteger):
        out = array.astype(np.float32) / 65535.0  # PNG declares no smaller bit depth
    elif np.issubdtype(array.dtype, np.signedinteger):
        bits = array.dtype.itemsize * 8
        out = ((array.astype(np.float64) + 2.0 ** (bits - 1)) / (2.0**bits - 1)).astype(np.float32)
    else:
        out = array.astype(np.float32)
        lo, hi = float(np.nanmin(out)), float(np.nanmax(out))
        if lo < 0.0 or hi > 1.0:
            out = (out - lo) / (hi - lo if hi > lo else 1.0)
    out = np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _axis(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel source positions, clamped to the image: neighbours and weights along one axis."""
    x = np.maximum((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), size_in - 1)
    return x0, np.minimum(x0 + 1, size_in - 1), (x - x0).astype(np.float32)


def bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres and no antialiasing, on float32 (= cv2 INTER_LINEAR)."""
    if image.shape[:2] == (height, width):
        return image
    y0, y1, fy = _axis(image.shape[0], height)
    x0, x1, fx = _axis(image.shape[1], width)
    rows = image[y0] * (1 - fy)[:, None, None] + image[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def resize(image: np.ndarray, spec: dict) -> np.ndarray:
    """The card's resize: shorter side + centre crop (crop), or longer side + zero padding (pad)."""
    mode, size = spec["mode"], spec["image_size"]
    h, w = image.shape[:2]
    if mode not in ("crop", "pad"):
        sys.exit(f"resize mode {mode!r} is not covered by this example (crop and pad are)")
    scale = size / (min(h, w) if mode == "crop" else max(h, w))
    image = bilinear(image, max(1, round(h * scale)), max(1, round(w * scale)))
    h, w = image.shape[:2]
    if mode == "crop":
        top, left = (h - size) // 2, (w - size) // 2
        return image[top : top + size, left : left + size]
    top, left = int((size - h) / 2), int((size - w) / 2)
    out = np.zeros((size, size, image.shape[2]), np.float32)
    out[top : top + h, left : left + w] = image
    return out


def preprocess(path: Path, spec: dict, scaling: dict) -> np.ndarray:
    """One image file -> the CHW float32 array the graph takes."""
    image = to_unit(match_channels(decode(path), spec["channels"]["count"]), scaling)
    image = resize(image, spec["resize"])
    mean = np.asarray(spec["normalize"]["mean"], np.float32)
    std = np.asarray(spec["normalize"]["std"], np.float32)
    image = (image - mean) / std
    multiple = spec["size_rule"]["multiple"]
    if spec["size_rule"]["other_sizes"] == "refused" and (image.shape[0] % multiple or image.shape[1] % multiple):
        sys.exit(f"{path}: {image.shape[0]}x{image.shape[1]} is not a multiple of {multiple}")
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def classify(folder: Path, paths: list[Path]) -> tuple[list[str], np.ndarray]:
    """Class names and the (N, K) probabilities of the images, in order."""
    card, session = load_export(folder)
    spec = card["input_spec"]
    batch = np.stack([preprocess(p, spec, card["preprocessing"].get("scaling") or {}) for p in paths])
    logits = session.run(["logits"], {card["head"].get("input", "images"): batch})[0].astype(np.float64)
    if card["task"] == "multilabel":
        return card["classes"], 1.0 / (1.0 + np.exp(-logits))
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return card["classes"], exp / exp.sum(axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path, help="export folder (model.json + model.onnx)")
    parser.add_argument("images", type=Path, nargs="+", help="image files or folders of them")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON line per image, every class")
    args = parser.parse_args()
    paths = [f for p in args.images for f in (sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])]
    classes, probabilities = classify(args.export, paths)
    for path, row in zip(paths, probabilities, strict=True):
        order = np.argsort(-row, kind="stable")[: args.top_k]
        if args.json:
            scores = dict(zip(classes, row.tolist(), strict=True))
            print(json.dumps({"file": str(path), "label": classes[order[0]], "probabilities": scores}))
        else:
            print(path, "  ".join(f"{classes[i]} {row[i]:.4f}" for i in order))


if __name__ == "__main__":
    main()
