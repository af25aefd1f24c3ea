"""The Mask2Former head through the spine: `run_segment` from an official-layout head file with class
aggregation and only `predictor.class_embed` training, then load, evaluate, predict and serve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dinotune.backbones import load_backbone
from dinotune.config import validate
from dinotune.evaluation.segment import evaluate_segmentation, predict_masks
from dinotune.heads.mask2former import to_official
from dinotune.model import load_model
from dinotune.model.mask2former import build_mask_segmenter
from dinotune.serve.runtime import load_engine
from dinotune.verbs.segment import SegmentConfig, run_segment
from tests.heads.m2f_shapes import AGGREGATE, HEAD_CLASSES, tiny_config, write_dataset

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    base = tmp_path_factory.mktemp("m2f")
    data = write_dataset(base / "data", 16, 6)
    torch.manual_seed(0)
    backbone = load_backbone("random:vit_test16", device="cpu", seed=0)
    head = build_mask_segmenter(backbone, tiny_config(), HEAD_CLASSES, HEAD_CLASSES).head
    torch.save(to_official(head.state_dict()), base / "head.pth")  # the layout of a released head file
    (base / "aggregate.yaml").write_text(yaml.safe_dump(AGGREGATE))
    m2f = tiny_config(weights=base / "head.pth", head_classes=HEAD_CLASSES, aggregate=base / "aggregate.yaml",
                      trainable=["predictor.class_embed"]).model_dump()  # fmt: skip
    cfg = validate(SegmentConfig, {
        "data": {"root": str(data), "image_size": 64, "num_workers": 0, "augment": "none"},
        "backbone": {"source": "random:vit_test16"},
        "head": {"type": "m2f", "m2f": m2f},
        "batch_size": 8,
        "optim": {"head_lr": 3e-2, "warmup": 0.0},
        "trainer": {"max_epochs": 2, "progress_bar": False},
        "inference": {"mode": "whole"},
        "out": str(base / "run"),
    })  # fmt: skip
    result = run_segment(cfg)
    return result.run_dir, data, {k: v.clone() for k, v in head.state_dict().items()}


def test_the_run_keeps_the_official_head_but_its_classifier(run) -> None:
    run_dir, _, start = run
    card = json.loads((run_dir / "model.json").read_text())
    assert card["classes"] == ["background", "square", "disk"]
    assert card["head"]["type"] == "m2f"
    assert card["head"]["head_classes"] == HEAD_CLASSES
    assert card["head"]["aggregate"] == AGGREGATE
    model, _ = load_model(run_dir)
    saved = model.head.state_dict()
    changed = sorted(k for k in start if not torch.equal(start[k], saved[k]))
    assert changed == ["predictor.class_embed.bias", "predictor.class_embed.weight"]
    assert torch.equal(model.head.aggregation[1], torch.tensor([0.0, 1.0, 1.0, 0.0]))


def test_evaluate_predict_and_serve_agree(run, tmp_path: Path) -> None:
    run_dir, data, _ = run
    metrics = evaluate_segmentation(run_dir, data, split="val", out=tmp_path / "eval")
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val"]["miou"] == pytest.approx(trained["val"]["miou"])  # the same model, the same images
    assert (tmp_path / "eval" / "report.html").is_file()
    image = data / "images" / "val" / "000.png"
    [mask_path] = predict_masks(run_dir, [image], tmp_path / "pred", overlays=False)
    predicted = np.asarray(Image.open(mask_path))
    engine = load_engine(run_dir)
    pixels = np.asarray(Image.open(image).convert("RGB"), dtype=np.float32) / 255.0
    prep = engine.card.preprocessing
    chw = ((pixels - np.asarray(prep.mean, dtype=np.float32)) / np.asarray(prep.std, dtype=np.float32)).transpose(
        2, 0, 1
    )
    served = engine.segment(np.ascontiguousarray(chw)).argmax(0)
    assert predicted.shape == (64, 64)
    assert (served == predicted).mean() > 0.999


@pytest.mark.slow
def test_onnx_export_matches_pytorch(run, tmp_path: Path) -> None:
    from dinotune.export.onnx import export_model

    run_dir, _, _ = run
    report = export_model(run_dir, tmp_path / "export", timing_repeats=1)
    assert report["dynamic_axes"] == ["batch"]  # one input size per graph (see the warning)
    assert report["parity"]["pixel_agreement"] >= 0.999
    assert report["parity"]["within_goal"]
