"""Cost of torch-free preprocessing: the numpy eval transform (what an ONNX export is served with) against
the albumentations/OpenCV pipeline (what training, predict and PyTorch serving run), side by side in one
process on the same images, as a ratio (shared CPU: compare ratios, not milliseconds). For scale, the
decode of the same image (PIL, to float32) is timed too: it is paid by both paths.

    python benchmarks/serve_preprocessing.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result

from dinotune.data.numpy_transforms import EvalTransform
from dinotune.data.preprocessing import Preprocessing
from dinotune.serve.images import decode_upload

SIZES = {"vga_640x480": (480, 640), "12mp_4000x3000": (3000, 4000)}


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _case(prep: Preprocessing, h: int, w: int, repeats: int) -> dict:
    ours, reference = EvalTransform.from_preprocessing(prep, 16), prep.transform(16)
    pixels = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    image = decode_upload(data, "x.jpg", channels=3, max_pixels=10**8)
    numpy_ms = albu_ms = 0.0
    for _ in range(3):  # interleaved rounds
        numpy_ms += _median_ms(lambda: ours(image), repeats) / 3
        albu_ms += _median_ms(lambda: reference(image), repeats) / 3
    return {
        "numpy_ms": round(numpy_ms, 2),
        "albumentations_ms": round(albu_ms, 2),
        "numpy_vs_albumentations": round(numpy_ms / albu_ms, 2),
        "decode_ms": round(_median_ms(lambda: decode_upload(data, "x.jpg", channels=3, max_pixels=10**8), 3), 1),
        "max_abs_diff": float(np.abs(ours(image) - reference(image)["image"].numpy()).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    result: dict = {"image_size": 224, "repeats": args.repeats, "cases": {}}
    for resize in ("crop", "pad", "keep"):
        for name, (h, w) in SIZES.items():
            case = _case(Preprocessing(image_size=224, resize=resize), h, w, args.repeats)
            result["cases"][f"{resize}/{name}"] = case
            print(resize, name, case)
    write_result("serve_preprocessing", result)


if __name__ == "__main__":
    main()
