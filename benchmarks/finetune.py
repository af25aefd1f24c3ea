"""Fine-tuning cost on CPU: a ViT-S/16-sized backbone at 224 px, batch 32, AdamW with the fine-tuning
parameter groups. Configurations: full fine-tuning, LoRA (rank 4, all attention + MLP linears), full +
activation checkpointing.

Each configuration runs in a fresh subprocess. Peak memory = max RSS (`resource.getrusage`) after the
training steps minus max RSS just before the first step (model, optimizer and batch allocated, AdamW
state excluded as it is created lazily); that difference is the step's activations + gradients + AdamW
state. Steps/s is measured over `--steps` steps after one warm-up step. Timings on a shared machine are
noisy: compare the ratios.

    python benchmarks/finetune.py [--steps 3] [--batch 32] [--size 224] [--threads 1]

`--threads` defaults to 1: on a shared 2-core machine, 2 BLAS threads competing with other jobs ran ~6x
slower than 1 (57 s vs ~9 s per full step).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CONFIGS = {
    "full": {"mode": "finetune", "checkpointing": False},
    "lora": {"mode": "lora", "checkpointing": False},
    "full+checkpointing": {"mode": "finetune", "checkpointing": True},
}


def measure(name: str, steps: int, batch: int, size: int, threads: int) -> dict:
    import resource
    import time
    import warnings

    import torch
    import torch.nn.functional as F

    from dinotune.backbones import load_backbone
    from dinotune.heads.linear import new_linear_head
    from dinotune.model import Classifier
    from dinotune.tasks.classify import prepare_model
    from dinotune.training.optim import OptimConfig, build_optimizer, param_groups

    warnings.simplefilter("ignore")
    if threads > 0:
        torch.set_num_threads(threads)
    cfg = CONFIGS[name]
    backbone = load_backbone("random:vits16", device="cpu")
    model = Classifier(backbone, new_linear_head(backbone.feature_widths, 10, "cls+patch_mean", False, 0))
    counts = prepare_model(model, cfg["mode"], activation_checkpointing=cfg["checkpointing"])
    groups = param_groups(backbone, [model.head], lr=1e-5, head_lr=1e-3, layer_decay=0.9, weight_decay=0.05)
    optimizer = build_optimizer(groups, OptimConfig())
    model.train()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, size, size, generator=gen), torch.randint(0, 10, (batch,), generator=gen)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "config": name,
        "steps_per_s": steps / seconds,
        "seconds_per_step": seconds / steps,
        "baseline_rss_mb": base_kb / 1024,
        "peak_rss_mb": peak_kb / 1024,
        "step_peak_mb": (peak_kb - base_kb) / 1024,
        "trainable_params": counts["trainable"],
        "total_params": counts["total"],
        "trainable_percent": 100 * counts["trainable"] / counts["total"],
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps, args.batch, args.size, args.threads)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import write_result

    rows = []
    for name in CONFIGS:
        command = [
            sys.executable,
            __file__,
            "--one",
            name,
            "--steps",
            str(args.steps),
            "--batch",
            str(args.batch),
            "--size",
            str(args.size),
            "--threads",
            str(args.threads),
        ]
        out = subprocess.run(
            command, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    by = {r["config"]: r for r in rows}
    cut = 1 - by["full+checkpointing"]["step_peak_mb"] / by["full"]["step_peak_mb"]
    summary = {
        "activation_checkpointing_memory_cut": cut,
        "goal_cut_at_least": 0.40,
        "lora_trainable_percent": by["lora"]["trainable_percent"],
        "goal_lora_percent_below": 2.0,
        "checkpointing_slowdown": by["full"]["steps_per_s"] / by["full+checkpointing"]["steps_per_s"],
        "lora_speedup": by["lora"]["steps_per_s"] / by["full"]["steps_per_s"],
    }
    write_result(
        "finetune",
        {
            "backbone": "random:vits16",
            "image_size": args.size,
            "batch": args.batch,
            "steps": args.steps,
            "memory_method": "max RSS after steps minus max RSS before the first step, fresh process per configuration",
            "results": rows,
            "summary": summary,
        },
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
