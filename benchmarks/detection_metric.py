"""COCO box mAP: the cost of one evaluation with faster-coco-eval (dinotune's backend) against pycocotools
(the reference), side by side in one process on the same synthetic predictions, with the figures compared.

Images hold 1-5 objects of 5 classes and 20 detections each (jittered copies of the objects, a fifth with a
wrong class), as a detector's output before thresholding looks. Each backend evaluates the same COCO dicts
(evaluate + accumulate + summarize); the best of `--repeats` runs is kept for each.
Run: python benchmarks/detection_metric.py [--images 1000 --repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np
from _common import write_result

from dinotune.metrics.detection import coco_detections, coco_ground_truth


def synthetic(n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(seed)
    targets, predictions = [], []
    for _ in range(n):
        k = int(rng.integers(1, 6))
        corner, size = rng.uniform(0, 400, (k, 2)), rng.uniform(10, 150, (k, 2))
        boxes, labels = np.c_[corner, corner + size], rng.integers(0, 5, k)
        which = rng.integers(0, k, 20)
        wrong = rng.uniform(size=20) < 0.2
        targets.append({"boxes": boxes, "labels": labels})
        predictions.append(
            {
                "boxes": boxes[which] + rng.normal(0, 8, (20, 4)),
                "scores": rng.uniform(0, 1, 20),
                "labels": np.where(wrong, rng.integers(0, 5, 20), labels[which]),
            }
        )
    return targets, predictions


def evaluate(coco_cls, eval_cls, gt: dict, dt: list[dict]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        ground = coco_cls()
        ground.dataset = gt
        ground.createIndex()
        found = coco_cls()
        annotations = [{**d, "id": i, "area": d["bbox"][2] * d["bbox"][3], "iscrowd": 0} for i, d in enumerate(dt, 1)]
        found.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": annotations}
        found.createIndex()
        evaluator = eval_cls(ground, found, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return time.perf_counter() - start, np.asarray(evaluator.stats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from faster_coco_eval import COCO as FastCOCO
    from faster_coco_eval import COCOeval_faster
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    targets, predictions = synthetic(args.images)
    gt, dt = coco_ground_truth(targets, 5), coco_detections(predictions)
    times: dict[str, list[float]] = {"pycocotools": [], "faster_coco_eval": []}
    stats = {}
    for _ in range(args.repeats):  # interleaved, so load on the machine hits both alike
        for name, coco_cls, eval_cls in (
            ("pycocotools", COCO, COCOeval),
            ("faster_coco_eval", FastCOCO, COCOeval_faster),
        ):
            seconds, stats[name] = evaluate(coco_cls, eval_cls, gt, dt)
            times[name].append(seconds)
    best = {k: min(v) for k, v in times.items()}
    result = {
        "images": args.images,
        "detections": len(dt),
        "seconds_best": best,
        "seconds_all": times,
        "speedup_faster_coco_eval": best["pycocotools"] / best["faster_coco_eval"],
        "max_abs_difference_of_the_12_figures": float(np.abs(stats["pycocotools"] - stats["faster_coco_eval"]).max()),
        "map": float(stats["faster_coco_eval"][0]),
    }
    print({k: v for k, v in result.items() if k != "seconds_all"})
    write_result("detection_metric", result)


if __name__ == "__main__":
    main()
