"""ONNX export figures: parity with PyTorch, ONNX Runtime fp32 vs PyTorch eager, int8 vs fp32, and
where int8 was kept as the served model (faster, top-1 agreement and embedding cosine >= 0.99) and why not.

Random-weight ViT-S/16 and ConvNeXt-T (`random:vits16`, `random:convnext_tiny`, the released shapes) with
a random linear head at 224 px, calibrated and validated on `sample_images` (elpv solar cells when
installed, else upscaled digits), dynamic and static int8 each. Random weights make agreement figures a
property of the quantiser on this architecture, not of a trained model; speed is what transfers. Timing
is the median over interleaved repeats (shared CPU: compare ratios, not absolute milliseconds).

    python benchmarks/export.py [--archs vits16 convnext_tiny] [--size 224] [--images 32] [--repeats 10]
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


def model_folder(folder: Path, arch: str, size: int, choice: str, classes: int = 10) -> Path:
    backbone = load_backbone(f"random:{arch}", device="cpu")
    dim = len(choice.split("+")) * backbone.embed_dim
    gen = torch.Generator().manual_seed(0)
    head = LinearHead(
        torch.randn(classes, dim, generator=gen) / dim**0.5,
        torch.zeros(classes),
        torch.zeros(dim),
        torch.ones(dim),
        feature_choice=choice,
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


def bench_arch(root: Path, arch: str, images: Path, args: argparse.Namespace) -> tuple[dict, dict]:
    """Dynamic and static int8 exports of one architecture: its summary row and the full reports."""
    choice = "cls" if arch.startswith("convnext") else "cls+patch_mean"
    folder = model_folder(root / arch, arch, args.size, choice)
    reports = {}
    for method in ("dynamic", "static"):
        start = time.perf_counter()
        report = export_model(
            folder,
            root / f"{arch}-{method}",
            quantize="int8",
            static=method == "static",
            calibration_images=images,
            max_images=args.images,
            timing_repeats=args.repeats,
        )
        report["export_seconds"] = round(time.perf_counter() - start, 1)
        reports[f"int8_{method}"] = report
    fp32 = reports["int8_dynamic"]
    summary = {
        "model": f"random:{arch} + linear head ({choice}, 10 classes), {args.size}px",
        "parity_max_abs_diff": fp32["parity"]["max_abs_diff"],
        "onnxruntime_fp32_vs_torch_eager_speedup": fp32["timing"]["onnxruntime_speedup_vs_torch"],
        "timing_batch": fp32["timing"]["batch"],
        "other_sizes": fp32["other_sizes"]["rule"],
    }
    for method in ("dynamic", "static"):
        q = reports[f"int8_{method}"]["int8"]
        summary[f"int8_{method}"] = {
            "served": reports[f"int8_{method}"]["served"],
            "kept": q["kept"],
            "reasons": q["reasons"],
            "top1_agreement": q["top1_agreement"],
            "mean_cosine_vs_fp32": round(q["mean_cosine_vs_fp32"], 5),
            "min_cosine_vs_fp32": round(q["min_cosine_vs_fp32"], 5),
            "n": q["n"],
            "speedup_vs_fp32": q["timing"]["int8_speedup_vs_fp32"],
            "size_ratio": q["size_ratio"],
        }
    return summary, reports


def table(summaries: dict[str, dict]) -> str:
    lines = [f"{'model':<14} {'int8':<8} {'top-1':>6} {'cosine':>7} {'speed':>6}  served"]
    for arch, summary in summaries.items():
        for method in ("dynamic", "static"):
            q = summary[f"int8_{method}"]
            why = "int8 (faster and agrees)" if q["kept"] else "fp32: " + "; ".join(q["reasons"])
            lines.append(
                f"{arch:<14} {method:<8} {q['top1_agreement']:>6.3f} {q['mean_cosine_vs_fp32']:>7.4f} "
                f"{q['speedup_vs_fp32']:>5.2f}x  {why}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["vits16", "convnext_tiny"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="RANDOM WEIGHTS")
    root = Path(tempfile.mkdtemp(prefix="dinotune-bench-export-"))
    images = sample_images(args.images)
    summaries, reports = {}, {}
    for arch in args.archs:
        summaries[arch], reports[arch] = bench_arch(root, arch, images, args)
    write_result("export", {"summary": summaries, "torch_threads": torch.get_num_threads(), "reports": reports})
    print(table(summaries))


if __name__ == "__main__":
    main()
