"""The detection module's loss trains what each backbone mode says: the head always, the backbone when
fine-tuned, only the LoRA adapters with LoRA, nothing of it when frozen."""

from __future__ import annotations

import warnings

import pytest
import torch

from dinotune.backbones import load_backbone
from dinotune.heads.detect import DetectHeadConfig
from dinotune.model.detector import build_detector
from dinotune.tasks.detect import DetectionModule
from dinotune.training.modes import prepare_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("mode", ["linear", "finetune", "lora"])
def test_loss_reaches_what_the_mode_trains(mode: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = load_backbone("random:vit_test16", device="cpu")
    model = build_detector(backbone, DetectHeadConfig(strides=[4, 8, 16], width=16), 3)
    prepare_model(model, mode)
    module = DetectionModule(model, ["a", "b", "c"], mode=mode)
    outputs, points = model(torch.randn(2, 3, 64, 64))
    boxes = [torch.tensor([[8.0, 8, 30, 30]]), torch.tensor([[20.0, 30, 60, 50], [0, 0, 12, 12]])]
    loss = module.loss_fn(outputs, points, boxes, [torch.tensor([0]), torch.tensor([1, 2])])["loss"]
    loss.backward()
    head = [p.grad for p in model.head.parameters()]
    assert all(g is not None for g in head) and any(float(g.abs().sum()) > 0 for g in head)
    trained = {n for n, p in model.backbone.named_parameters() if p.grad is not None and float(p.grad.abs().sum()) > 0}
    if mode == "linear":
        assert not trained
    elif mode == "lora":
        assert trained and all("lora" in n for n in trained)
    else:
        assert any("lora" not in n for n in trained)
