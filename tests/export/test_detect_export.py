"""A trained detector's ONNX export: decoded boxes and scores before NMS for its fixed letterboxed size, and
after the same numpy NMS the boxes equal PyTorch's within 1e-3 px, on random inputs and its val images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dinotune.data.boxes import load_detection
from dinotune.data.decode import read_image
from dinotune.data.letterbox import LetterboxTransform
from dinotune.errors import DataError
from dinotune.export.detect import BOX_GOAL, match_detections
from dinotune.model import load_model, read_card
from dinotune.verbs.common import Result

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_export_report_box_parity(detect_export: Path) -> None:
    card = read_card(detect_export)
    report = card.metrics["export"]
    assert card.task == "detect" and report["outputs"] == ["boxes", "scores"]
    assert card.head["fixed_size"] == 64 and report["dynamic_axes"] == ["batch"]
    boxes = report["parity"]["detections"]
    assert boxes["within_goal"] and boxes["max_box_diff"] <= BOX_GOAL and boxes["unmatched"] == 0
    assert report["validation_images"] > 0 and any(name.startswith("images_") for name in boxes["cases"])
    assert sum(case["detections"] for case in boxes["cases"].values()) > 0
    assert "letterbox" in card.input_spec["description"] and "class-aware NMS" in card.input_spec["description"]


def test_onnx_twin_detects_like_pytorch_on_real_images(detect_run: Result, detect_export: Path, shapes64: Path) -> None:
    torch_model, card = load_model(detect_run.run_dir)
    onnx_model, _ = load_model(detect_export)
    prep = card.preprocessing
    letterbox = LetterboxTransform(prep.image_size, prep.mean, prep.std, prep.channels)
    images = [letterbox(read_image(s.path, 3))[0] for s in load_detection(shapes64).splits["test"]]
    batch = torch.from_numpy(np.stack(images))
    expected, got = torch_model.predict(batch), onnx_model.predict(batch)
    worst, unmatched, count = 0.0, 0, 0
    for e, g in zip(expected, got, strict=True):
        diff, missing = match_detections({k: v.numpy() for k, v in e.items()}, {k: v.numpy() for k, v in g.items()})
        worst, unmatched, count = max(worst, diff), unmatched + missing, count + len(e["boxes"])
    assert count > 0 and unmatched == 0 and worst <= BOX_GOAL, (worst, unmatched)
    with pytest.raises(DataError, match="64x64 only"):
        onnx_model.predict(torch.zeros(1, 3, 96, 96))


def test_match_detections_counts_what_has_no_counterpart() -> None:
    a = {"boxes": np.array([[0, 0, 10, 10], [5, 5, 9, 9]], np.float32), "labels": np.array([0, 1])}
    b = {"boxes": np.array([[0, 0, 10, 10.5]], np.float32), "labels": np.array([0])}
    assert match_detections(a, b) == (pytest.approx(0.5), 2)  # one count short, and label 1 has no box
