"""The linear probe against the seed spec's way and against scikit-learn, side by side in one run.

- seed way: a linear head on the CLS token trained with AdamW for 50 epochs, the frozen backbone run on
  every batch of every epoch (with the default train augmentation, which is what re-running buys);
- dinotune: features extracted once into the cache, then the whole sweep (13 lrs x 3 wds x feature
  choices) in one pass per epoch;
- scikit-learn LogisticRegression (C chosen on val) on the same cached features as the selected head;
- sweep cost: the full grid vs a single head, on the same cached features and end to end.
Run: python benchmarks/linear_probe.py [--backbone random:vit_tiny16 --per-class 150 --image-size 112]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch
from _common import write_result
from torch.utils.data import DataLoader

from dinotune import load_backbone
from dinotune.data.bundled import elpv_imagefolder
from dinotune.data.datasets import ClassificationDataset
from dinotune.data.formats import load_dataset
from dinotune.heads.linear import build_input
from dinotune.tasks.probe import sweep_linear_heads
from dinotune.verbs.probe import probe


def seed_way(backbone, spec, prep, epochs: int, batch_size: int = 32) -> tuple[float, float]:
    """Returns (seconds, test accuracy)."""
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


def sklearn_accuracy(result) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sweep = result.sweep
    sets = result.extras_sets
    choice = sweep.best.feature_choice
    x = {k: build_input(v.features, choice).numpy() for k, v in sets.items()}
    y = {k: v.labels.numpy() for k, v in sets.items()}
    scaler = StandardScaler().fit(x["train"])
    best_c, best_val = 1.0, -1.0
    for c in (0.001, 0.01, 0.1, 1.0, 10.0):
        model = LogisticRegression(C=c, max_iter=3000).fit(scaler.transform(x["train"]), y["train"])
        val = model.score(scaler.transform(x["val"]), y["val"])
        if val > best_val:
            best_c, best_val = c, val
    model = LogisticRegression(C=best_c, max_iter=3000).fit(scaler.transform(x["train"]), y["train"])
    return float(model.score(scaler.transform(x["test"]), y["test"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="random:vit_tiny16")
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--epochs", type=int, default=50)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="RANDOM WEIGHTS")
    work = Path(tempfile.mkdtemp(prefix="dinotune-bench-"))
    root = elpv_imagefolder(work / "elpv", per_class=args.per_class, size=args.image_size)
    backbone = load_backbone(args.backbone, device="cpu")

    start = time.perf_counter()
    ours = probe(
        {"root": root, "image_size": args.image_size},
        backbone=backbone,
        out=work / "run",
        cache_dir=work / "cache",
        sweep={"epochs": args.epochs},
        knn={"enabled": False},
        progress=False,
    )
    ours_s = time.perf_counter() - start
    ours_acc = ours.metrics["probe"]["test"]["accuracy"]

    # the same features again, from the cache, for the sweep-cost and scikit-learn comparisons
    from dinotune.verbs.runs import RunLog

    from dinotune.verbs.probe import ProbeConfig, _preprocessing, extract_splits

    cfg = ProbeConfig(data={"root": root, "image_size": args.image_size}, cache_dir=work / "cache", progress=False)
    spec = load_dataset(root, task="classify")
    prep = _preprocessing(cfg, backbone)
    sets, _ = extract_splits(cfg, spec, backbone, prep, RunLog(work / "scratch"))
    ours.extras_sets = sets
    timings = {}
    for name, grid in {"one_head": ([1e-2], [0.0], ["cls+patch_mean"]), "full_grid": (None, None, None)}.items():
        kwargs = {k: v for k, v in zip(("lrs", "weight_decays", "feature_choices"), grid, strict=True) if v}
        t = time.perf_counter()
        result = sweep_linear_heads(sets["train"], sets["val"], epochs=args.epochs, progress=False, **kwargs)
        timings[name] = (time.perf_counter() - t, len(result.table))
    extraction_s = ours_s - timings["full_grid"][0]

    seed_s, seed_acc = seed_way(backbone, spec, prep, args.epochs)
    sk_acc = sklearn_accuracy(ours)
    result = {
        "backbone": args.backbone,
        "dataset": f"ELPV {args.per_class}/class at {args.image_size}px",
        "train_val_test": {k: len(v) for k, v in sets.items()},
        "epochs": args.epochs,
        "seed_way_seconds": seed_s,
        "seed_way_test_accuracy": seed_acc,
        "dinotune_seconds": ours_s,
        "dinotune_test_accuracy": ours_acc,
        "speedup_vs_seed_way": seed_s / ours_s,
        "dinotune_best_head": ours.sweep.best.as_dict(),
        "sklearn_logreg_test_accuracy": sk_acc,
        "dinotune_minus_sklearn_points": 100 * (ours_acc - sk_acc),
        "sweep_seconds_one_head": timings["one_head"][0],
        "sweep_seconds_full_grid": timings["full_grid"][0],
        "heads_in_full_grid": timings["full_grid"][1],
        "sweep_cost_ratio_grid_vs_one_head": timings["full_grid"][0] / timings["one_head"][0],
        "end_to_end_cost_ratio_grid_vs_one_head": (extraction_s + timings["full_grid"][0])
        / (extraction_s + timings["one_head"][0]),
    }
    for key, value in result.items():
        print(f"{key:42s} {value:.4f}" if isinstance(value, float) else f"{key:42s} {value}")
    write_result(f"linear_probe_{args.backbone.split(':')[-1]}", result)


if __name__ == "__main__":
    main()
