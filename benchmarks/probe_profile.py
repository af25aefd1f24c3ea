"""Where `dinotune probe`'s time goes on cached features, and which method wins selection.

For each split seed of the linear_probe datasets (features extracted once into a cache, extraction not
timed): the L-BFGS C path alone (the default), the SGD grid alone, both together (the old default), and
kNN's k/T selection, each timed; for "both", which method the validation rule kept and the test score of
each variant. scikit-learn's selection (benchmarks/linear_probe.py) runs alternately for the ratio.
Run: python benchmarks/probe_profile.py --dataset elpv|fashion-mnist|mosaic [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import write_result
from linear_probe import dataset, dataset_arguments, knn_seconds, sklearn_logreg
from threadpoolctl import threadpool_limits

from dinotune import load_backbone
from dinotune.data.formats import load_dataset
from dinotune.run_folder import RunLog
from dinotune.tasks.probe import sweep_linear_heads
from dinotune.verbs.probe import ProbeConfig, _preprocessing, extract_splits

VARIANTS = {"lbfgs (default)": ("lbfgs",), "sgd": ("sgd",), "sgd+lbfgs": ("sgd", "lbfgs")}


def one_seed(args, seed: int, backbone, work: Path) -> dict:
    root, name = dataset(args, seed, work)
    cfg = ProbeConfig(data={"root": root, "image_size": args.image_size}, cache_dir=work / "cache", progress=False)
    spec = load_dataset(root, task="classify")
    sets, _ = extract_splits(cfg, spec, backbone, _preprocessing(cfg, backbone), RunLog(work / f"scratch{seed}"))
    row: dict = {"seed": seed, "dataset": name, "variants": {}}
    for label, methods in VARIANTS.items():
        start = time.perf_counter()
        res = sweep_linear_heads(sets["train"], sets["val"], sets["test"], methods=methods,
                                 multilabel=spec.multilabel, progress=False)  # fmt: skip
        row["variants"][label] = {"seconds": time.perf_counter() - start, "test_score": res.test_score,
                                  "kept": res.best.method, "heads": len(res.table)}  # fmt: skip
    row["knn_selection_seconds"] = knn_seconds(sets, spec.multilabel)
    sk = sklearn_logreg(sets, spec.multilabel)
    row["sklearn"] = {"seconds": sk["seconds"], "test_score": sk["test_score"]}
    print(row, flush=True)
    return row


def main() -> None:
    args = dataset_arguments(argparse.ArgumentParser(description=__doc__)).parse_args()
    args.image_size = 112 if args.dataset == "elpv" else 64
    warnings.filterwarnings("ignore", message="RANDOM WEIGHTS")
    torch.set_num_threads(1)
    threadpool_limits(1)
    work = Path(tempfile.mkdtemp(prefix="dinotune-bench-"))
    backbone = load_backbone(args.backbone, device="cpu")
    rows = [one_seed(args, seed, backbone, work) for seed in args.seeds]
    mean = {label: {"seconds": float(np.mean([r["variants"][label]["seconds"] for r in rows])),
                    "test_score": float(np.mean([r["variants"][label]["test_score"] for r in rows]))}
            for label in VARIANTS}  # fmt: skip
    mean["sgd+lbfgs"]["sgd_kept"] = sum(r["variants"]["sgd+lbfgs"]["kept"] == "sgd" for r in rows)
    mean["sklearn"] = {k: float(np.mean([r["sklearn"][k] for r in rows])) for k in ("seconds", "test_score")}
    print("MEAN", mean)
    write_result(f"probe_profile_{args.dataset}", {"backbone": args.backbone, "mean": mean, "seeds": rows})


if __name__ == "__main__":
    main()
