"""Fine-tuning throughput on one CUDA GPU: ViT-S/16 at 224 under bf16 autocast, AdamW, eager and compiled.

Images/s of full training steps (forward + backward + optimizer) after warm-up, for a random-weight
backbone + linear head, batch `--batch`; repeated `--rounds` times (median and spread). The CPU costs of
the same steps are in benchmarks/finetune.py. Run: python benchmarks/gpu_finetune.py [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from _common import write_result

from dinotune import load_backbone
from dinotune.features.extract import compute_features


def steps_per_s(step, steps: int) -> float:
    for _ in range(3):
        step()  # warm-up (and compilation)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="vits16")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if not torch.cuda.is_available():
        raise SystemExit("gpu_finetune.py needs a CUDA GPU")
    backbone = load_backbone(f"random:{args.arch}", device="cuda")
    head = torch.nn.Linear(backbone.embed_dim, 10).cuda()
    params = [*backbone.parameters(), *head.parameters()]
    optim = torch.optim.AdamW(params, lr=1e-5)
    images = torch.randn(args.batch, 3, 224, 224, device="cuda")
    labels = torch.randint(0, 10, (args.batch,), device="cuda")

    def forward(x):
        return head(compute_features(backbone, x, ("cls",))["cls"])

    def make_step(fn):
        def step() -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(fn(images), labels)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()

        return step

    variants = {"eager": make_step(forward)}
    if not args.no_compile:
        variants["compile"] = make_step(torch.compile(forward))
    figures: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            figures[name].append(steps_per_s(step, args.steps) * args.batch)
    result = {
        "arch": args.arch,
        "batch": args.batch,
        "gpu": torch.cuda.get_device_name(),
        "max_memory_gb": torch.cuda.max_memory_allocated() / 1e9,
        "train_images_per_s": {
            name: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v}
            for name, v in figures.items()
        },
    }
    print(result)
    write_result(f"gpu_finetune_{args.arch}", result)


if __name__ == "__main__":
    main()
