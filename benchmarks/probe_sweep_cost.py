"""Cost of the batched linear-probe sweep: 1 head vs the default 39-head grid, and accuracy vs sklearn.

Run: `python benchmarks/probe_sweep_cost.py` (not part of the test suite; set OMP_NUM_THREADS to pin
the thread count). Writes benchmarks/results/probe_sweep_cost.json. Each timing is one run: on a busy
machine (see load_average_at_start) repeat it.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from dinotune.tasks.probe import DEFAULT_LRS, DEFAULT_WEIGHT_DECAYS, FeatureSet, sweep_linear_heads

OUT = Path(__file__).parent / "results" / "probe_sweep_cost.json"


def _synthetic(n: int, d: int, c: int, seed: int) -> FeatureSet:
    """DINO-like: class structure in a low-rank subspace plus isotropic noise, O(1) per-dim scale."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(c, d, generator=torch.Generator().manual_seed(99)) / d**0.5
    y = torch.randint(0, c, (n,), generator=g)
    x = 3 * basis[y] * d**0.5 / 4 + torch.randn(n, d, generator=g)
    return FeatureSet({"cls": x}, y)


def _time_sweep(train: FeatureSet, val: FeatureSet, lrs, wds, epochs: int, batch_size: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    res = sweep_linear_heads(
        train, val, lrs=lrs, weight_decays=wds, epochs=epochs, batch_size=batch_size, patience=None, progress=False
    )
    return time.perf_counter() - t0, res.best.val_score


def cost(n: int, d: int, c: int, epochs: int = 10, batch_size: int = 256) -> dict:
    train, val = _synthetic(n, d, c, 0), _synthetic(n // 5, d, c, 1)
    _time_sweep(train, val, (1e-3,), (0.0,), 1, batch_size)  # warm-up
    t1, _ = _time_sweep(train, val, (1e-3,), (0.0,), epochs, batch_size)
    t39, _ = _time_sweep(train, val, DEFAULT_LRS, DEFAULT_WEIGHT_DECAYS, epochs, batch_size)
    heads = len(DEFAULT_LRS) * len(DEFAULT_WEIGHT_DECAYS)
    return {
        "n_train": n,
        "dim": d,
        "classes": c,
        "epochs": epochs,
        "batch_size": batch_size,
        "heads": heads,
        "seconds_1_head": round(t1, 3),
        f"seconds_{heads}_heads": round(t39, 3),
        "ratio": round(t39 / t1, 2),
        "ratio_vs_sequential_runs": round(t39 / (heads * t1), 3),
    }


def accuracy_vs_sklearn() -> dict:
    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    xtr, xva, ytr, yva = train_test_split(xtr, ytr, test_size=0.25, random_state=0, stratify=ytr)

    def fs(a: np.ndarray, b: np.ndarray) -> FeatureSet:
        return FeatureSet({"cls": torch.tensor(a, dtype=torch.float32)}, torch.tensor(b))

    res = sweep_linear_heads(fs(xtr, ytr), fs(xva, yva), fs(xte, yte), epochs=30, batch_size=64, progress=False)
    scaler = StandardScaler().fit(xtr)
    sk = {}
    for c in (0.1, 1.0, 10.0):
        clf = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(xtr), ytr)
        sk[f"C={c}"] = {"val": clf.score(scaler.transform(xva), yva), "test": clf.score(scaler.transform(xte), yte)}
    best_c = max(sk, key=lambda k: sk[k]["val"])
    return {
        "dataset": "sklearn load_digits (64 pixel features), 943/315/540 train/val/test",
        "probe_test_accuracy": res.test_score,
        "probe_best": res.best.as_dict(),
        "sklearn_logreg": sk,
        "sklearn_selected_on_val": best_c,
    }


def main() -> None:
    results = {
        "machine": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
        },
        "cost": [cost(5000, 384, 10), cost(5000, 768, 10), cost(5000, 768, 100)],
        "accuracy": accuracy_vs_sklearn(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
