"""`dinotune probe` at its default settings against a grid-tuned scikit-learn LogisticRegression.

Both read the SAME cached features of each split; for every split seed:
- dinotune: `probe()` end to end (extraction + its default heads, kept on validation), and the selection
  step alone (`sweep_linear_heads` on the cached features, default settings) for the wall time;
- scikit-learn: StandardScaler (train statistics) + LogisticRegression(max_iter=1000), the feature
  choice and C (1e-3 ... 10) chosen jointly by validation accuracy (first best in grid order);
  multi-label (`--dataset mosaic`): OneVsRestClassifier(LogisticRegression) chosen by validation mAP
  (macro average precision), the probe's multi-label metric.
Test labels are read only to score the two kept models. The mean of the seeds is the headline. The two
selection steps are timed `--repeats` times, alternately (the machine is shared: medians and spread).
Both sides run with one thread (torch and BLAS): on a shared 2-core machine extra threads only thrash.
`mosaic`: 2x2 mosaics of Fashion-MNIST images labelled with the set of classes shown (`_probe_data`).
Run: python benchmarks/linear_probe.py --dataset elpv|fashion-mnist|mosaic [--seeds 0 1 2] [--seed-way]
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
from _probe_data import mosaic_folder, small_image_folder
from threadpoolctl import threadpool_limits
from torch.utils.data import DataLoader

from dinotune import load_backbone
from dinotune.data.bundled import elpv_imagefolder
from dinotune.data.datasets import ClassificationDataset
from dinotune.data.formats import load_dataset
from dinotune.heads.linear import available_feature_choices, build_input
from dinotune.run_folder import RunLog
from dinotune.tasks.knn import select_knn
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


def _sklearn_fit(x, y, c: float, multilabel: bool):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    model = LogisticRegression(C=c, max_iter=1000)
    return (OneVsRestClassifier(model) if multilabel else model).fit(x, y)


def _sklearn_score(model, x, y, multilabel: bool) -> float:
    """Accuracy, or mAP: macro average precision over labels with a positive (as dinotune's `map`)."""
    from sklearn.metrics import average_precision_score

    if not multilabel:
        return float(model.score(x, y))
    present = y.sum(0) > 0
    return float(average_precision_score(y[:, present], model.predict_proba(x)[:, present], average="macro"))


def sklearn_logreg(sets, multilabel: bool = False) -> dict:
    """Feature choice x C by validation score, then the kept model's test score."""
    from sklearn.preprocessing import StandardScaler

    start = time.perf_counter()
    best = {"val": -1.0}
    for choice in available_feature_choices(sets["train"].features):
        x = {k: build_input(v.features, choice).numpy() for k, v in sets.items()}
        y = {k: v.labels.numpy() for k, v in sets.items()}
        scaler = StandardScaler().fit(x["train"])
        for c in SKLEARN_CS:
            model = _sklearn_fit(scaler.transform(x["train"]), y["train"], c, multilabel)
            val = _sklearn_score(model, scaler.transform(x["val"]), y["val"], multilabel)
            if val > best["val"]:
                best = {"val": val, "choice": choice, "C": c, "model": model, "scaler": scaler, "x": x, "y": y}
    seconds = time.perf_counter() - start
    test = _sklearn_score(best["model"], best["scaler"].transform(best["x"]["test"]), best["y"]["test"], multilabel)
    return {"test_score": test, "seconds": seconds, "feature_choice": best["choice"], "C": best["C"]}


def dataset(args, seed: int, work: Path) -> tuple[Path, str]:
    if args.dataset == "elpv":
        return elpv_imagefolder(work / f"elpv{seed}", per_class=args.per_class, size=112, seed=seed), "ELPV"
    counts = dict(zip(("train", "val", "test"), args.counts, strict=True))
    if args.dataset == "mosaic":
        return mosaic_folder(work / f"mosaic{seed}", seed, counts)
    return small_image_folder(work / f"fm{seed}", seed, counts)


def timed_selection(sets, multilabel: bool, repeats: int) -> dict:
    """dinotune's selection step and scikit-learn's, alternately `repeats` times: every wall time kept."""
    ours, theirs, sk = [], [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        sweep = sweep_linear_heads(sets["train"], sets["val"], multilabel=multilabel, progress=False)
        ours.append(time.perf_counter() - start)
        sk = sklearn_logreg(sets, multilabel)
        theirs.append(sk["seconds"])
    return {"ours": ours, "sklearn": theirs, "sklearn_result": sk, "heads": len(sweep.table)}


def knn_seconds(sets, multilabel: bool) -> float:
    """kNN's k and temperature chosen on val, as the probe does (the score is a stand-in: this is a timing)."""

    def score(probs: torch.Tensor, labels: torch.Tensor) -> float:
        hits = (probs > 0.5).eq(labels > 0.5) if multilabel else probs.argmax(1).eq(labels)
        return float(hits.float().mean())

    train, val = sets["train"], sets["val"]
    start = time.perf_counter()
    select_knn(train.features["cls"], train.labels, val.features["cls"], val.labels, score)
    return time.perf_counter() - start


def one_seed(args, seed: int, backbone, work: Path) -> dict:
    root, name = dataset(args, seed, work)
    data = {"root": root, "image_size": args.image_size}
    start = time.perf_counter()
    ours = probe(data, backbone=backbone, out=work / f"run{seed}", cache_dir=work / "cache",
                 knn={"enabled": False}, progress=False)  # fmt: skip
    end_to_end = time.perf_counter() - start
    cfg = ProbeConfig(data=data, cache_dir=work / "cache", progress=False)
    spec = load_dataset(root, task="classify")
    sets, _ = extract_splits(cfg, spec, backbone, _preprocessing(cfg, backbone), RunLog(work / f"scratch{seed}"))
    timing = timed_selection(sets, spec.multilabel, args.repeats)
    key = "map" if spec.multilabel else "accuracy"
    row = {
        "seed": seed,
        "dataset": name,
        "metric": key,
        "train_val_test": {k: len(v) for k, v in sets.items()},
        "dinotune_test_score": ours.metrics["probe"]["test"][key],
        "dinotune_kept_head": ours.metrics["probe"]["best_head"],
        "dinotune_selection_seconds": float(np.median(timing["ours"])),
        "dinotune_selection_seconds_all": timing["ours"],
        "dinotune_end_to_end_seconds": end_to_end,
        "knn_selection_seconds": knn_seconds(sets, spec.multilabel),
        "heads_compared": timing["heads"],
        "sklearn": timing["sklearn_result"],
        "sklearn_seconds": float(np.median(timing["sklearn"])),
        "sklearn_seconds_all": timing["sklearn"],
    }
    row["dinotune_minus_sklearn_points"] = 100 * (row["dinotune_test_score"] - row["sklearn"]["test_score"])
    if args.seed_way and seed == args.seeds[0] and not spec.multilabel:
        row["seed_way_seconds"], row["seed_way_test_accuracy"] = seed_way(
            backbone, spec, _preprocessing(cfg, backbone), 50
        )
    print(row, flush=True)
    return row


def summary(rows: list[dict]) -> dict:
    """Means over the seeds, the speed ratio (scikit-learn / dinotune, per seed's medians) and the spread."""
    mean = {
        "metric": rows[0]["metric"],
        "dinotune_test_score": float(np.mean([r["dinotune_test_score"] for r in rows])),
        "sklearn_test_score": float(np.mean([r["sklearn"]["test_score"] for r in rows])),
        "dinotune_minus_sklearn_points": float(np.mean([r["dinotune_minus_sklearn_points"] for r in rows])),
        "dinotune_selection_seconds": float(np.mean([r["dinotune_selection_seconds"] for r in rows])),
        "sklearn_seconds": float(np.mean([r["sklearn_seconds"] for r in rows])),
        "speedup_vs_sklearn_per_seed": [r["sklearn_seconds"] / r["dinotune_selection_seconds"] for r in rows],
        "dinotune_seconds_range": [min(min(r["dinotune_selection_seconds_all"]) for r in rows),
                                   max(max(r["dinotune_selection_seconds_all"]) for r in rows)],
        "sklearn_seconds_range": [min(min(r["sklearn_seconds_all"]) for r in rows),
                                  max(max(r["sklearn_seconds_all"]) for r in rows)],
    }  # fmt: skip
    mean["target_met"] = mean["dinotune_minus_sklearn_points"] >= -0.5
    mean["faster"] = all(x >= 1.0 for x in mean["speedup_vs_sklearn_per_seed"])
    return mean


def dataset_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options `dataset` reads, shared with benchmarks/probe_profile.py."""
    parser.add_argument("--dataset", choices=("elpv", "fashion-mnist", "mosaic"), default="elpv")
    parser.add_argument("--backbone", default="random:vit_tiny16")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--per-class", type=int, default=300, help="ELPV images per class (split 70/15/15)")
    parser.add_argument("--counts", type=int, nargs=3, default=[1000, 500, 1000], help="Fashion-MNIST/mosaic splits")
    return parser


def main() -> None:
    parser = dataset_arguments(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--repeats", type=int, default=3, help="timings of each selection step, alternately")
    parser.add_argument("--image-size", type=int, default=None, help="default: 112 (ELPV), 64 (others)")
    parser.add_argument("--seed-way", action="store_true", help="also time the seed spec's way (slow)")
    args = parser.parse_args()
    args.image_size = args.image_size or (112 if args.dataset == "elpv" else 64)
    warnings.filterwarnings("ignore", message="RANDOM WEIGHTS")
    torch.set_num_threads(1)
    threadpool_limits(1)
    work = Path(tempfile.mkdtemp(prefix="dinotune-bench-"))
    backbone = load_backbone(args.backbone, device="cpu")
    rows = [one_seed(args, seed, backbone, work) for seed in args.seeds]
    mean = summary(rows)
    print("MEAN", mean)
    result = {"backbone": args.backbone, "image_size": args.image_size, "dataset": rows[0]["dataset"], "mean": mean,
              "seeds": rows}  # fmt: skip
    write_result(f"linear_probe_{args.dataset}_{args.backbone.split(':')[-1]}", result)


if __name__ == "__main__":
    main()
