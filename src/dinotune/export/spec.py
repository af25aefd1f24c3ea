"""What an export's card says about its input: every step from image file to tensor, and from outputs
to probabilities, as data (`input_spec`) and as one plain text (`input_spec.description`).

A client in any language can rebuild the pixels the model saw from this alone (docs/examples/
onnx_client.py does, with numpy and PIL). The steps are those `Preprocessing.load` runs: decode
(`data.decode`), channels (`match_channels`), intensity (`data.intensity`), resize (albumentations,
i.e. OpenCV `cv2.resize` on float32), normalise (`data.transforms`); segmenters predict at full size
(`model.inference`). The facts below were checked against those modules (tests/export/test_client.py).
"""

from __future__ import annotations

from typing import Any

from dinotune.data.numpy_transforms import resolve_norm
from dinotune.model.card import ModelCard

SPEC_VERSION = 1
BILINEAR = {
    "interpolation": "bilinear",
    "sample_grid": "half-pixel centres: src = (dst + 0.5) * in_size / out_size - 0.5, clamped to [0, in_size - 1]",
    "antialias": False,
    "values": "float32 after intensity scaling (not uint8)",
    "implementation": "OpenCV cv2.resize INTER_LINEAR (through albumentations); equal to torch "
    "F.interpolate(mode='bilinear', align_corners=False, antialias=False)",
}
ROUND = "max(1, round(x)) with Python's round (halves to even)"
CHANNEL_RULE = (
    "converted before intensity scaling, in the file's own dtype: 1 -> 3 repeats the grey channel; "
    "2 -> 3 repeats the first; 4 -> 3 keeps the first three; 3 or 4 -> 1 is the luma "
    "0.299 R + 0.587 G + 0.114 B (ITU-R 601) computed in float32 and cast back to the file's dtype "
    "(integers truncated); 2 -> 1 keeps the first; other counts are refused"
)
DECODE_RULE = (
    "format from the file's first bytes; PNG/JPEG/BMP/WebP/GIF with PIL, EXIF orientation applied "
    "(ImageOps.exif_transpose), palette/RGBA/CMYK/YCbCr converted to RGB and LA/1 to L (alpha dropped), "
    "16-bit grey PNG kept as uint16, 16-bit colour PNG read with OpenCV (then RGB order); TIFF with "
    "tifffile (same-shaped pages stacked as channels, declared alpha dropped); DICOM and NIfTI as in docs/medical.md"
)
INTENSITY_RULES = {
    "percentile": "scaling.mode percentile: (x - low) / (high - low) per band, clipped",
    "per_image": "scaling.mode per_image: each channel's own percentiles map to 0 and 1, clipped",
    "window": "an explicit scaling.window on single-band data: the DICOM linear window",
    "uint8": "x / 255",
    "divisor": "scaling.divisor set: x / divisor",
    "unsigned": "x / the file's declared maximum (TIFF SMaxSampleValue/MaxSampleValue), else / (2^bits - 1) "
    "for its real bit depth (TIFF BitsPerSample, DICOM BitsStored), else / 65535",
    "signed": "(x + 2^(bits-1)) / (2^bits - 1)",
    "float": "kept when every value is in [0, 1], else (x - min) / (max - min) of the image",
    "then": "NaN and TIFF nodata pixels become 0; everything is clipped to [0, 1]",
}


def input_spec(card: ModelCard, outputs: list[str], multiple: int, other_sizes: str) -> dict[str, Any]:
    """The card's `input_spec`: structured steps plus their plain-text `description`."""
    prep = card.preprocessing
    mean, std = resolve_norm(prep.mean, prep.std, prep.channels)
    spec: dict[str, Any] = {
        "version": SPEC_VERSION,
        "decode": DECODE_RULE,
        "channels": {"count": prep.channels, "order": _order(prep.channels), "rule": CHANNEL_RULE},
        "intensity": {
            "order": "the first rule that applies, in this order",
            "rules": INTENSITY_RULES,
            "scaling": prep.scaling,
        },
        "resize": _segment_resize(card) if card.task in DENSE else _resize(prep.resize, prep.image_size, multiple),
        "normalize": {
            "formula": "(x - mean) / std per channel, after resizing",
            "mean": [round(float(v), 6) for v in mean],
            "std": [round(float(v), 6) for v in std],
        },
        "tensor": {"name": "images", "dtype": "float32", "layout": "NCHW", "channels": prep.channels},
        "size_rule": _size_rule(card.task, multiple, other_sizes),
        "outputs": _outputs(card, outputs),
    }
    spec["description"] = describe(card, spec)
    return spec


def _resize(mode: str, size: int, multiple: int) -> dict[str, Any]:
    new_size = f"({ROUND}) of h * scale and w * scale"
    if mode == "crop":
        steps = [
            {"op": "resize_shorter_side", "scale": f"{size} / min(h, w)", "new_size": new_size, **BILINEAR},
            {"op": "center_crop", "size": [size, size], "top": f"(H - {size}) // 2", "left": f"(W - {size}) // 2"},
        ]
    elif mode == "letterbox":  # detection
        steps = [
            {"op": "resize_longer_side", "scale": f"{size} / max(h, w)", "new_size": new_size, **BILINEAR},
            {"op": "pad", "size": [size, size], "top": "0", "left": "0", "bottom_right": "the rest", "value": 0.0,
             "note": "in [0, 1] units, before normalising; boxes in the original image = output boxes / scale"},
        ]  # fmt: skip
    elif mode == "pad":
        pad = {"top": f"int(({size} - H) / 2)", "left": f"int(({size} - W) / 2)", "bottom_right": "the rest"}
        steps = [
            {"op": "resize_longer_side", "scale": f"{size} / max(h, w)", "new_size": new_size, **BILINEAR},
            {"op": "pad", "size": [size, size], **pad, "value": 0.0, "note": "in [0, 1] units, before normalising"},
        ]
    else:
        steps = [
            {
                "op": "resize_keep_aspect",
                "scale": f"{size} / max(h, w)",
                "new_size": f"max({multiple}, round(side * scale / {multiple}) * {multiple}) with Python's round",
                "interpolation": "OpenCV INTER_AREA (area average, antialiased) when scale < 1, else bilinear",
                "bilinear": BILINEAR,
            }
        ]
    unchanged = "an image already at the new size is not resampled"
    return {"mode": mode, "image_size": size, "unchanged_when": unchanged, "steps": steps}


def _order(channels: int) -> str:
    return {3: "RGB", 1: "grey"}.get(channels, "the file's band order")


def _segment_resize(card: ModelCard) -> dict[str, Any]:
    inference = {"mode": "slide", "crop": 512, "stride": 341, "flip": False, "scales": [1.0], **card.inference}
    return {
        "mode": "full_size",
        "steps": [{"op": "none", "note": "segmenters predict at the image's own size; no resize, no crop"}],
        "inference": inference,
        "windows": "slide: windows of `crop` pixels every `stride` pixels, the last of a row/column moved back to "
        "end at the border; an image smaller than `crop` is one window; overlapping logits averaged",
        "tta": "each scale resized with torch F.interpolate(bilinear, align_corners=False); flip = horizontal; "
        + (
            "depth per view brought back to the image size bilinearly, depths averaged (no softmax)"
            if card.task == "depth"
            else "softmax per view, brought back to the image size bilinearly, probabilities averaged, then argmax"
        ),
    }


DENSE = ("segment", "depth")  # tasks predicted at the image's own size


def _size_rule(task: str, multiple: int, other_sizes: str) -> dict[str, Any]:
    if task in DENSE:
        how = "padded with zeros (after normalising) at the bottom and right, logits cropped back"
    elif other_sizes == "refused":
        how = "refused (the PyTorch model refuses them, and so do dinotune's ONNX runners)"
    else:
        how = "run as PyTorch runs them (feature maps floored), checked against PyTorch at export"
    return {"multiple": multiple, "other_sizes": "padded" if task in DENSE else other_sizes, "how": how}


def _outputs(card: ModelCard, outputs: list[str]) -> dict[str, str]:
    described = {
        "logits": {
            "classify": f"(N, {len(card.classes)}) class scores; probabilities = softmax over classes",
            "multilabel": f"(N, {len(card.classes)}) label scores; probabilities = sigmoid of each",
            "segment": f"(N, {len(card.classes)}, H, W) class scores per pixel; softmax over classes",
        }.get(card.task, ""),
        "depth": "(N, 1, H, W) depth in metres per pixel; windows / views are averaged (no softmax)",
        "embedding": "(N, D) the backbone's normed class token (the drift monitor's input)",
        "patch_mean": "(N, D) the mean of the normed patch tokens",
        "boxes": "(N, L, 4) decoded xyxy boxes in input pixels, one per pyramid position, before NMS",
        "scores": f"(N, L, {len(card.classes)}) per-class scores sqrt(sigmoid(class) * sigmoid(centerness)); "
        f"detections: scores > {card.inference.get('score_threshold')}, the best {card.inference.get('pre_nms_top_k')}"
        f", class-aware NMS at IoU {card.inference.get('nms_iou')}, at most {card.inference.get('max_detections')}",
    }
    result = {name: described[name] for name in outputs}
    if card.classes:
        result["classes"] = "the card's `classes`, in the order of the logits"
    return result


def describe(card: ModelCard, spec: dict[str, Any]) -> str:
    """The plain text of the spec: what a person reads, and what each ONNX file's metadata holds."""
    resize, norm, rule = spec["resize"], spec["normalize"], spec["size_rule"]
    lines = [
        f"dinotune {card.task} model" + (f", classes in output order: {', '.join(card.classes)}" * bool(card.classes)),
        f"Input: float32 tensor 'images', shape (N, {spec['channels']['count']}, H, W), "
        f"channel order {spec['channels']['order']}.",
        f"1. Decode: {DECODE_RULE}.",
        f"2. Channels: to {spec['channels']['count']}, {CHANNEL_RULE}.",
        "3. Intensity to float32 in [0, 1], the first rule that applies: "
        + "; ".join(f"{k}: {v}" for k, v in INTENSITY_RULES.items())
        + (f". This model's scaling: {card.preprocessing.scaling}." if card.preprocessing.scaling else "."),
        f"4. Resize ({resize['mode']}): " + _resize_text(resize),
        f"5. Normalise per channel: (x - mean) / std, mean = {norm['mean']}, std = {norm['std']}; then HWC -> CHW.",
        f"6. Sizes: height and width multiples of {rule['multiple']}; other sizes are {rule['how']}.",
        "7. Outputs: " + "; ".join(f"{k}: {v}" for k, v in spec["outputs"].items()) + ".",
    ]
    return "\n".join(lines)


def _resize_text(resize: dict[str, Any]) -> str:
    if resize["mode"] == "full_size":
        inf = resize["inference"]
        return (
            f"none; {inf['mode']} inference (crop {inf['crop']}, stride {inf['stride']}, flip {inf['flip']}, "
            f"scales {inf['scales']}): {resize['windows']}; {resize['tta']}."
        )
    bilinear = (
        f"bilinear with {BILINEAR['sample_grid']}, no antialiasing, on float32 values ({BILINEAR['implementation']})"
    )
    texts = []
    for step in resize["steps"]:
        if step["op"] == "resize_keep_aspect":
            how = f"OpenCV INTER_AREA (area average) when scale < 1, else {bilinear}"
        else:
            how = bilinear
        if step["op"].startswith("resize"):
            texts.append(f"scale = {step['scale']}, new size = {step['new_size']}, {how}; {resize['unchanged_when']}")
        elif step["op"] == "center_crop":
            texts.append(f"centre crop {step['size'][0]}x{step['size'][1]}, top = {step['top']}, left = {step['left']}")
        else:
            texts.append(
                f"pad to {step['size'][0]}x{step['size'][1]} with 0.0 before normalising, top = {step['top']}, "
                f"left = {step['left']}, the rest at the bottom and right"
            )
    return "; ".join(texts) + "."
