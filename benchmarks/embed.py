"""Extraction speed against the hardware: matmul peak, each engine, `dinotune embed` and the naive loop, in one run.

Measured side by side, in rounds (the CI machine's 2 cores are shared and the matmul peak itself moves by
+-10% from one second to the next, so every figure is repeated and its spread reported; each path's % of
peak divides by the better of the peaks measured just before and just after it, and the most conservative
figure, its median speed over the best peak of the whole run, is printed beside it; the engines run in
alternating order from round to round):
- peak: best fp32 `torch.mm` of 2048x2048 matrices (5 tries), torch's thread count, around every path;
- each engine on one batch of preprocessed images (best of 2 calls), run as the product runs it, in
  cache-sized chunks (`dinotune.features.chunks`): eager PyTorch, ONNX Runtime on the rewritten graph
  (what `auto` uses), ONNX Runtime on the plain export (to show what the graph passes buy), optionally
  torch.compile; and eager and ONNX Runtime on the whole batch in one call (`*_one_call`, to show what
  the chunks buy);
- `dinotune embed` end to end (decode in DataLoader workers + the automatically chosen engine + cache
  writes; the exported graph already on disk, as in every run after the first);
- the naive loop: one preprocessing call and one eager model call per image (how the seed code embedded).
FLOPs of a ViT forward (matmuls only; norms, softmax, GELU, RoPE are elementwise, < 1%):
  N = patches + 1 + registers tokens, d = width, h = MLP hidden width, L = blocks,
  patch embedding 2 * patches * (C * p * p) * d, and per block 2*N*4*d^2 (qkv + proj) + 2*N*2*d*h (MLP)
  + 4*N^2*d (QK^T and AV); ViT-S/16 at 224: N = 201, d = 384, h = 1536, L = 12 -> 9.40 GFLOP per image.
Run: python benchmarks/embed.py [--arch vits16 --images 256 --rounds 3 --compile]  (~3-4 min idle, 2 cores)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
from _common import matmul_flops, sample_images, write_result
from PIL import Image

from dinotune import load_backbone
from dinotune.features.chunks import ActivationMeter, in_chunks
from dinotune.features.engine import FeatureExtractor, max_difference
from dinotune.features.engines import CompiledEngine, EagerEngine, OnnxEngine
from dinotune.verbs.embed import EmbedConfig, run_embed


def vit_flops(backbone, size: int) -> float:
    """Forward FLOPs of one image (formula in the module docstring)."""
    cfg = backbone.hf.config
    p, d, h, layers = cfg.patch_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    patches = (size // p) ** 2
    n = patches + 1 + cfg.num_register_tokens
    mlp = 3 if getattr(cfg, "use_gated_mlp", False) else 2  # SwiGLU has three d x h matrices
    block = 2 * n * 4 * d * d + 2 * n * mlp * d * h + 4 * n * n * d
    return 2 * patches * (cfg.num_channels * p * p) * d + layers * block


def naive_embed(backbone, paths: list[Path], size: int) -> torch.Tensor:
    mean = np.array(backbone.info.mean, dtype=np.float32)
    std = np.array(backbone.info.std, dtype=np.float32)
    out = []
    with torch.no_grad():
        for path in paths:
            image = Image.open(path).convert("RGB")
            scale = size / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
            left, top = (image.width - size) // 2, (image.height - size) // 2
            image = image.crop((left, top, left + size, top + size))
            array = (np.asarray(image, dtype=np.float32) / 255 - mean) / std
            x = torch.from_numpy(array.transpose(2, 0, 1)).unsqueeze(0)
            out.append(backbone(x.to(next(backbone.parameters()).device)).cpu())
    return torch.cat(out)


def synthetic_images(n: int, size: int = 64) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="dinotune-bench-")) / "images"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"img{i:04d}.png")
    return folder


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_flops(device: str) -> float:
    """fp32 matmul peak on the CPU (torch's threads); on CUDA the bf16 peak, what autocast runs at."""
    if device == "cpu":
        return matmul_flops()
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    timed(torch.mm, a, a)
    return 2 * 8192**3 / min(timed(torch.mm, a, a) for _ in range(5))


def embed_once(folder: Path, cache_root: Path, size: int, batch: int) -> tuple[float, dict]:
    """Seconds of one cold `dinotune embed` (features not cached; the exported graph kept in engines/)."""
    for child in cache_root.iterdir() if cache_root.exists() else []:
        if child.name != "engines":
            shutil.rmtree(child)
    out = Path(tempfile.mkdtemp()) / "e.safetensors"
    cfg = EmbedConfig(data_dir=folder, out=out, image_size=size, batch_size=batch, cache_dir=cache_root)
    start = time.perf_counter()
    result = run_embed(cfg, progress=False, backbone=BACKBONE)
    return time.perf_counter() - start, result.metrics.get("engine") or {}


BACKBONE = None


def bracket(row: dict[str, float], peaks: list[float], device: str, name: str, gflops: float) -> None:
    """Record a path's speed and the better of the peaks measured just before (`peaks[-1]`) and after it."""
    peaks.append(peak_flops(device) / 1e9)
    row[f"{name}_gflops"], row[f"{name}_peak_gflops"] = gflops, max(peaks[-2:])


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def print_table(summary: dict, names: list[str], parity: dict[str, float]) -> None:
    """The headline: each path's fraction of the peak measured around it (best and median round), of the
    run's best peak (the most conservative), parity, and embed against the naive loop."""
    peak = summary["peak_gflops"]
    print(f"peak fp32 matmul GFLOP/s: median {peak['median']:.1f} ({peak['min']:.1f}-{peak['max']:.1f})")
    header = ("best %", 7), ("median %", 9), ("% of best peak", 15), ("GFLOP/s", 8), ("|diff| vs eager", 16)
    print(f"{'path':24s} " + " ".join(f"{text:>{width}s}" for text, width in header))
    for name in names:
        row = summary[name]
        diff = f"{parity[name]:.1e}" if name in parity else "-"
        print(
            f"{name:24s} {100 * row['fraction_of_bracketing_peak_best']:6.1f}% "
            f"{100 * row['fraction_of_bracketing_peak']['median']:8.1f}% "
            f"{100 * row['median_fraction_of_the_runs_best_peak']:14.1f}% {row['gflops']['median']:8.1f} {diff:>16s}"
        )
    ratio = summary["embed_speedup_vs_naive"]
    print(f"embed vs naive per-image loop: {ratio['median']:.2f}x (median; {ratio['min']:.2f}-{ratio['max']:.2f}x)")


def main() -> None:
    global BACKBONE
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="vits16")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--naive-images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--synthetic", action="store_true", help="random-pixel images (fast to make; dry runs)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes to compile on CPU)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (peak: bf16 matmul; eager under bf16 autocast)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.pop("DINOTUNE_ENGINE", None)  # the automatic choice is what is measured

    folder = synthetic_images(args.images) if args.synthetic else sample_images(args.images)
    paths = sorted(folder.glob("*.png"))
    BACKBONE = backbone = load_backbone(f"random:{args.arch}", device=args.device).eval()
    flop = vit_flops(backbone, args.image_size)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    if args.device != "cpu":
        x = x.pin_memory()
    cache_root = Path(tempfile.mkdtemp()) / "cache"
    engines = {"eager": EagerEngine(backbone)}
    export_s = {}
    if args.device == "cpu":
        for name, rewrite in (("onnxruntime", True), ("onnxruntime_plain_graph", False)):
            start = time.perf_counter()
            kinds, shape = engines["eager"].kinds, tuple(x.shape[1:])
            engines[name] = OnnxEngine(backbone, kinds, shape, cache_root / "engines", rewrite=rewrite)
            export_s[name] = time.perf_counter() - start
    if args.compile:
        engines["compile"] = CompiledEngine(backbone)
    with ActivationMeter(backbone) as meter:
        engines["eager"](x[:1])
    chunk = meter.chunk()  # what FeatureExtractor uses on this machine
    one_call = {f"{name}_one_call": engines[name] for name in ("eager", "onnxruntime") if name in engines}
    engines = {name: partial(in_chunks, engine, size=chunk) for name, engine in engines.items()} | one_call
    compile_s = {name: timed(engine, x) for name, engine in engines.items()}  # warm-up / compile
    reference = engines["eager"](x)
    parity = {name: max_difference(reference, engine(x))[0] for name, engine in engines.items() if name != "eager"}
    automatic = FeatureExtractor(backbone, graph_dir=cache_root / "engines")  # the automatic choice and its check
    automatic(x)

    rounds: list[dict[str, float]] = []
    all_peaks: list[float] = []
    for index in range(args.rounds):
        row, peaks = {}, [peak_flops(args.device) / 1e9]
        order = list(engines) if index % 2 == 0 else list(engines)[::-1]
        for name in order:
            seconds = min(timed(engines[name], x) for _ in range(2))
            bracket(row, peaks, args.device, name, args.batch_size * flop / seconds / 1e9)
        naive_s = timed(naive_embed, backbone, paths[: args.naive_images], args.image_size)
        row["naive_images_per_s"] = args.naive_images / naive_s
        peaks.append(peak_flops(args.device) / 1e9)
        embed_s, chosen = embed_once(folder, cache_root, args.image_size, args.batch_size)
        row["embed_images_per_s"] = len(paths) / embed_s
        bracket(row, peaks, args.device, "embed", row["embed_images_per_s"] * flop / 1e9)
        all_peaks += peaks
        rounds.append(row)
        print(f"round {index + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()), flush=True)

    summary: dict[str, object] = {"peak_gflops": spread(all_peaks)}
    for name in [*engines, "embed"]:
        achieved = [r[f"{name}_gflops"] for r in rounds]
        fractions = [r[f"{name}_gflops"] / r[f"{name}_peak_gflops"] for r in rounds]
        summary[name] = {
            "gflops": spread(achieved),
            "fraction_of_bracketing_peak": spread(fractions),
            "fraction_of_bracketing_peak_best": max(fractions),
            "median_fraction_of_the_runs_best_peak": statistics.median(achieved) / max(all_peaks),
            "images_per_s_median": statistics.median(achieved) * 1e9 / flop,
        }
    naive = [r["naive_images_per_s"] for r in rounds]
    summary["naive_images_per_s"] = spread(naive)
    summary["embed_speedup_vs_naive"] = spread([r["embed_images_per_s"] / r["naive_images_per_s"] for r in rounds])
    result = {
        "arch": args.arch,
        "image_size": args.image_size,
        "gflop_per_image": flop / 1e9,
        "flop_formula": "2*P*(C*p*p)*d + L*(8*N*d^2 + 2*N*m*d*h + 4*N^2*d), P patches, N=P+1+registers, m=2 (3 SwiGLU)",
        "images": len(paths),
        "batch_size": args.batch_size,
        "images_per_call": chunk,
        "threads": torch.get_num_threads(),
        "onnx_export_seconds": export_s,
        "first_call_seconds": compile_s,
        "max_abs_diff_vs_eager_one_batch": parity,
        "embed_engine_choice": chosen,
        "automatic_choice_on_one_batch": automatic.describe(),
        "device": args.device,
        "rounds": rounds,
        "summary": summary,
    }
    print(f"images per engine call: {chunk} (batch {args.batch_size})")
    print_table(summary, [*engines, "embed"], parity)
    write_result(f"embed_{args.arch}" + ("" if args.device == "cpu" else f"_{args.device}"), result)


if __name__ == "__main__":
    main()
