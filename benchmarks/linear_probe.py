"""`dinotune probe` at its default settings against a grid-tuned scikit-learn LogisticRegression.

Both read the SAME cached features of each split; for every split seed:
- dinotune: `probe()` end to end (extraction + SGD head grid + L-BFGS C path, head kept on validation),
  and the selection step alone (`sweep_linear_heads` on the cached features) for the wall time;
- scikit-learn: StandardScaler (train statistics) + LogisticRegression(max_iter=1000), the feature
  choice and C (1e-3 ... 10) chosen jointly by validation accuracy (first best in grid order).
Test labels are read only to score the two kept models. The mean of the seeds is the headline.
Both sides run with one thread (torch and BLAS): on a shared 2-core machine extra threads only thrash.
Run: python benchmarks/linear_probe.py --dataset elpv|fashion-mnist [--seeds 0 1 2] [--seed-way]
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
from _probe_data import small_image_folder
from threadpoolctl import threadpool_limits
from torch.utils.data import DataLoader

from dinotune import load_backbone
from dinotune.data.bundled import elpv_imagefolder
from dinotune.data.datasets import ClassificationDataset
from dinotune.data.formats import load_dataset
from dinotune.heads.linear import available_feature_choices, build_input
from dinotune.run_folder import RunLog
from dinotune.tasks.probe import sweep_linear_heads
from dinotune.verbs.probe import ProbeConfig, _preprocessing, extract_splits, probe

SKLEARN_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def seed_way(backbone, spec, prep, epochs: int, batch_size: int = 32) -> tuple[float, float]:
    """The seed spec's way (AdamW head, backbone re-run on every augmented batch): (seconds, test accuracy)."""
    patch = backbone.input_multiple
    train = ClassificationDataset(spec.splits["train"], prep.transform(patch, train=True, augment="default"))
    test = ClassificationDataset(spec.splits["test"], prep.transform(patch))
    head = torch.nn.Linear(backbone.embed_dim, spec.num_classes)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=1):
            with torch.no_grad():
                features = backbone(batch["image"])
            loss = torch.nn.functional.cross_entropy(head(features), batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    correct = total = 0
    with torch.no_grad():
        for batch in DataLoader(test, batch_size=64, num_workers=1):
            correct += (head(backbone(batch["image"])).argmax(1) == batch["label"]).sum().item()
            total += len(batch["label"])
    return time.perf_counter() - start, correct / total


def sklearn_logreg(sets) -> dict:
    """Feature choice x C by validation accuracy, then the kept model's test accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    start = time.perf_counter()
    best = {"val": -1.0}
    for choice in available_feature_choices(sets["train"].features):
        x = {k: build_input(v.features, choice).numpy() for k, v in sets.items()}
        y = {k: v.labels.numpy() for k, v in sets.items()}
        scaler = StandardScaler().fit(x["train"])
        for c in SKLEARN_CS:
            model = LogisticRegression(C=c, max_iter=1000).fit(scaler.transform(x["train"]), y["train"])
            val = model.score(scaler.transform(x["val"]), y["val"])
            if val > best["val"]:
                best = {"val": val, "choice": choice, "C": c, "model": model, "scaler": scaler, "x": x, "y": y}
    seconds = time.perf_counter() - start
    test = best["model"].score(best["scaler"].transform(best["x"]["test"]), best["y"]["test"])
    return {"test_accuracy": float(test), "seconds": seconds, "feature_choice": best["choice"], "C": best["C"]}


def one_seed(args, seed: int, backbone, work: Path) -> dict:
    if args.dataset == "elpv":
        root, name = elpv_imagefolder(work / f"elpv{seed}", per_class=args.per_class, size=112, seed=seed), "ELPV"
    else:
        counts = dict(zip(("train", "val", "test"), args.counts, strict=True))
        root, name = small_image_folder(work / f"fm{seed}", seed, counts)
    data = {"root": root, "image_size": args.image_size}
    start = time.perf_counter()
    ours = probe(data, backbone=backbone, out=work / f"run{seed}", cache_dir=work / "cache",
                 knn={"enabled": False}, progress=False)  # fmt: skip
    end_to_end = time.perf_counter() - start
    cfg = ProbeConfig(data=data, cache_dir=work / "cache", progress=False)
    spec = load_dataset(root, task="classify")
    sets, _ = extract_splits(cfg, spec, backbone, _preprocessing(cfg, backbone), RunLog(work / f"scratch{seed}"))
    start = time.perf_counter()
    sweep = sweep_linear_heads(sets["train"], sets["val"], progress=False)
    sweep_s = time.perf_counter() - start
    row = {
        "seed": seed,
        "dataset": name,
        "train_val_test": {k: len(v) for k, v in sets.items()},
        "dinotune_test_accuracy": ours.metrics["probe"]["test"]["accuracy"],
        "dinotune_kept_head": ours.metrics["probe"]["best_head"],
        "dinotune_selection_seconds": sweep_s,
        "dinotune_end_to_end_seconds": end_to_end,
        "heads_compared": len(sweep.table),
        "sklearn": sklearn_logreg(sets),
    }
    row["dinotune_minus_sklearn_points"] = 100 * (row["dinotune_test_accuracy"] - row["sklearn"]["test_accuracy"])
    if args.seed_way and seed == args.seeds[0]:
        row["seed_way_seconds"], row["seed_way_test_accuracy"] = seed_way(
            backbone, spec, _preprocessing(cfg, backbone), 50
        )
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", choices=("elpv", "fashion-mnist"), default="elpv")
    parser.add_argument("--backbone", default="random:vit_tiny16")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--per-class", type=int, default=300, help="ELPV images per class (split 70/15/15)")
    parser.add_argument("--counts", type=int, nargs=3, default=[1000, 500, 1000], help="Fashion-MNIST train val test")
    parser.add_argument("--image-size", type=int, default=None, help="default: 112 (ELPV), 64 (Fashion-MNIST)")
    parser.add_argument("--seed-way", action="store_true", help="also time the seed spec's way (slow)")
    args = parser.parse_args()
    args.image_size = args.image_size or (112 if args.dataset == "elpv" else 64)
    warnings.filterwarnings("ignore", message="RANDOM WEIGHTS")
    torch.set_num_threads(1)
    threadpool_limits(1)
    work = Path(tempfile.mkdtemp(prefix="dinotune-bench-"))
    backbone = load_backbone(args.backbone, device="cpu")
    rows = [one_seed(args, seed, backbone, work) for seed in args.seeds]
    mean = {
        "dinotune_test_accuracy": float(np.mean([r["dinotune_test_accuracy"] for r in rows])),
        "sklearn_test_accuracy": float(np.mean([r["sklearn"]["test_accuracy"] for r in rows])),
        "dinotune_minus_sklearn_points": float(np.mean([r["dinotune_minus_sklearn_points"] for r in rows])),
        "dinotune_selection_seconds": float(np.mean([r["dinotune_selection_seconds"] for r in rows])),
        "sklearn_seconds": float(np.mean([r["sklearn"]["seconds"] for r in rows])),
    }
    mean["target_met"] = mean["dinotune_minus_sklearn_points"] >= -0.5
    print("MEAN", mean)
    result = {"backbone": args.backbone, "image_size": args.image_size, "dataset": rows[0]["dataset"], "mean": mean,
              "seeds": rows}  # fmt: skip
    write_result(f"linear_probe_{args.dataset}_{args.backbone.split(':')[-1]}", result)


if __name__ == "__main__":
    main()
