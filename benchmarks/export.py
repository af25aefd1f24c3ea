"""ONNX export figures: parity with PyTorch, ONNX Runtime fp32 vs PyTorch eager, int8 vs fp32.

A random-weight ViT-S/16 (`random:vits16`, the released ViT-S shape) with a random linear head at 224 px,
calibrated and validated on `sample_images` (elpv solar cells when installed, else upscaled digits).
Random weights make agreement figures a property of the quantiser on this architecture, not of a trained
model; speed is what transfers. Timing is the median over interleaved repeats (shared CPU: compare
ratios, not absolute milliseconds).

    python benchmarks/export.py [--arch vits16] [--size 224] [--images 32] [--repeats 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import sample_images, write_result

from dinotune import load_backbone
from dinotune.data.preprocessing import Preprocessing
from dinotune.export.onnx import export_model
from dinotune.heads.linear import LinearHead
from dinotune.model import Classifier, ModelCard, save_model


def model_folder(folder: Path, arch: str, size: int, classes: int = 10) -> Path:
    backbone = load_backbone(f"random:{arch}", device="cpu")
    dim = 2 * backbone.embed_dim
    gen = torch.Generator().manual_seed(0)
    head = LinearHead(
        torch.randn(classes, dim, generator=gen) / dim**0.5,
        torch.zeros(classes),
        torch.zeros(dim),
        torch.ones(dim),
        feature_choice="cls+patch_mean",
    )
    info = backbone.info
    card = ModelCard(
        task="classify",
        classes=[f"c{i}" for i in range(classes)],
        preprocessing=Preprocessing(image_size=size, mean=info.mean, std=info.std),
        backbone={"source": info.source, "in_chans": 3, "seed": 0, "identity": info.identity},
        head={},
        license=info.license,
    )
    return save_model(folder, Classifier(backbone, head).eval(), card)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vits16")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="RANDOM WEIGHTS")
    root = Path(tempfile.mkdtemp(prefix="dinotune-bench-export-"))
    folder = model_folder(root / "model", args.arch, args.size)
    images = sample_images(args.images)
    result = {}
    for method in ("dynamic", "static"):
        start = time.perf_counter()
        report = export_model(
            folder,
            root / f"onnx-{method}",
            quantize="int8",
            static=method == "static",
            calibration_images=images,
            max_images=args.images,
            timing_repeats=args.repeats,
        )
        report["export_seconds"] = round(time.perf_counter() - start, 1)
        result[f"int8_{method}"] = report
    fp32 = result["int8_dynamic"]
    summary = {
        "model": f"random:{args.arch} + linear head (cls+patch_mean, 10 classes), {args.size}px",
        "parity_max_abs_diff": fp32["parity"]["max_abs_diff"],
        "onnxruntime_fp32_vs_torch_eager_speedup": fp32["timing"]["onnxruntime_speedup_vs_torch"],
        "timing_batch": fp32["timing"]["batch"],
    }
    for method in ("dynamic", "static"):
        q = result[f"int8_{method}"]["int8"]
        summary[f"int8_{method}"] = {
            "top1_agreement": q["top1_agreement"],
            "n": q["n"],
            "speedup_vs_fp32": q["timing"]["int8_speedup_vs_fp32"],
            "size_ratio": q["size_ratio"],
        }
    write_result("export", {"summary": summary, "torch_threads": torch.get_num_threads(), "reports": result})
    print(summary)


if __name__ == "__main__":
    main()
