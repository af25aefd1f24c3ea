"""The detect verb on generated shapes (exact boxes): a frozen random ViT + pyramid + FCOS head learns
to find them, well above a trivial baseline; the run folder reloads to the reported figures; predict
writes COCO-JSON that reads back; resume continues exactly; ONNX and served boxes equal PyTorch's."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dinotune.data.boxes import load_detection
from dinotune.errors import ConfigError
from dinotune.metrics.detection import detection_metrics
from dinotune.model import load_model, read_card
from dinotune.verbs.common import Result
from dinotune.verbs.detect_predict import detect_images, predict_boxes
from tests.detection_training import detect_config, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # 2 shared cores: more threads only spin
MARGIN = 0.08  # test mAP@[.5:.95] over the trivial baseline's (measured: 0.132 vs 0.0, 12 epochs, 23 s)


class StopAfterFirstEpoch(L.Callback):
    """An interruption at the end of epoch 1: the schedule and config stay those of the whole run."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.should_stop = True


def baseline_map(root: Path) -> float:
    """mAP of one box per test image: the mean training box (relative to the image) of the most frequent class."""
    spec = load_detection(root)
    train_boxes = [(s.boxes, s.width, s.height) for s in spec.splits["train"]]
    relative = np.concatenate([b / np.array([w, h, w, h], np.float32) for b, w, h in train_boxes])
    mean_box = relative.mean(0)
    prior = int(np.bincount(np.concatenate([s.labels for s in spec.splits["train"]])).argmax())
    test = spec.splits["test"]
    predictions = [{"boxes": (mean_box * np.array([s.width, s.height] * 2))[None], "scores": np.ones(1),
                    "labels": np.array([prior])} for s in test]  # fmt: skip
    return detection_metrics(predictions, [{"boxes": s.boxes, "labels": s.labels} for s in test], spec.classes)["map"]


def test_training_beats_the_trivial_baseline(detect_run: Result, shapes64: Path) -> None:
    baseline, trained = baseline_map(shapes64), detect_run.metrics["test"]["map"]
    assert baseline < 0.05
    assert trained > baseline + MARGIN, (trained, baseline)
    assert detect_run.metrics["test"]["map_50"] > 0.25
    assert detect_run.metrics["parameters"]["trainable"] < detect_run.metrics["parameters"]["total"] / 2


def test_run_folder_reloads_to_the_reported_figures(detect_run: Result, shapes64: Path) -> None:
    run_dir = detect_run.run_dir
    card = read_card(run_dir)
    assert card.task == "detect" and card.classes == ["square", "disc", "triangle"]
    assert card.head["category_ids"] == [1, 2, 3] and card.preprocessing.resize == "letterbox"
    assert card.inference["nms_iou"] == 0.6 and card.backbone.get("weights_dir") is None  # frozen: not copied
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["report_split"] == "test" and metrics["best"]["monitor"] == "val/map"
    test = load_detection(shapes64).splits["test"]
    _, found = detect_images(run_dir, [s.path for s in test])
    again = detection_metrics([d for *_, d in found], [{"boxes": s.boxes, "labels": s.labels} for s in test],
                              card.classes)  # fmt: skip
    assert again["map"] == pytest.approx(metrics["test"]["map"], abs=1e-9)


def test_predict_writes_coco_json_that_reads_back(detect_run: Result, shapes64: Path, tmp_path: Path) -> None:
    images = sorted((shapes64 / "images" / "test").iterdir())
    result = predict_boxes(detect_run.run_dir, [shapes64 / "images" / "test"], tmp_path / "pred")
    coco = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert result.metrics["images"] == len(images) == len(coco["images"])
    assert [c["name"] for c in coco["categories"]] == ["square", "disc", "triangle"]
    assert coco["annotations"] and all(0 <= a["score"] <= 1 for a in coco["annotations"])
    assert len(list((tmp_path / "pred" / "drawings").glob("*.png"))) == len(images)
    # a COCO dataset folder with these predictions as its annotations loads with the detection reader
    root = tmp_path / "again"
    (root / "annotations").mkdir(parents=True)
    (root / "images").symlink_to(shapes64 / "images" / "test")
    for image in coco["images"]:
        image["file_name"] = Path(image["file_name"]).name
    (root / "annotations" / "instances_train.json").write_text(json.dumps(coco))
    spec = load_detection(root)
    assert spec.classes == ["square", "disc", "triangle"]
    assert sum(s.num_boxes for split in spec.splits.values() for s in split) == len(coco["annotations"])


@pytest.mark.parametrize("augment", ["none", "default"])
def test_resume_continues_exactly(shapes64: Path, tmp_path: Path, augment: str) -> None:
    """Interrupted after epoch 1 and resumed: the same weights as the uninterrupted run."""
    two = {"max_epochs": 2, "progress_bar": False}
    data = {"root": str(shapes64), "image_size": 64, "num_workers": 0, "augment": augment}
    reference = train(shapes64, tmp_path / "reference", trainer=two, data=data)
    first = train(shapes64, tmp_path / "run", callbacks=(StopAfterFirstEpoch(),), trainer=two, data=data)
    assert first.metrics["epochs_run"] == 1
    with pytest.raises(ConfigError, match="--resume"):
        train(shapes64, tmp_path / "run", trainer=two, data=data)
    resumed = train(shapes64, tmp_path / "run", resume=True, trainer=two, data=data)
    assert resumed.metrics["resumed"] and resumed.metrics["steps"] == reference.metrics["steps"]
    expected = torch.load(reference.run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    got = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert (
        load_file(str(reference.run_dir / "head.safetensors")).keys()
        == load_file(str(tmp_path / "run" / "head.safetensors")).keys()
    )


def test_config_errors(shapes64: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="multiple of 16"):
        train(shapes64, tmp_path / "odd", data={"root": str(shapes64), "image_size": 72, "num_workers": 0})
    with pytest.raises(ConfigError, match=r"head\.type"):
        detect_config(shapes64, tmp_path / "x", head={"type": "detr"})


def test_loaded_model_predicts_like_the_trained_one(detect_run: Result) -> None:
    model, _ = load_model(detect_run.run_dir)
    images = torch.randn(2, 3, 64, 64)
    first, second = model.predict(images), model.predict(images)
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(first, second, strict=True))
