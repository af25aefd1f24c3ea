"""Parameter groups (layer-wise LR decay, differential head LR, no weight decay where it must not apply)
and the LR schedules."""

from __future__ import annotations

import math

import pytest
import torch

from dinotune.backbones import load_backbone
from dinotune.errors import ConfigError
from dinotune.training.optim import OptimConfig, build_optimizer, build_scheduler, param_groups
from dinotune.training.schedules import cosine_restarts, cosine_schedule, step_decay

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # 2 shared cores: more threads only spin


def _lr_by_name(groups: list[dict]) -> dict[str, tuple[float, float]]:
    return {name: (g["lr"], g["weight_decay"]) for g in groups for name in g["param_names"]}


def test_layer_decay_gives_each_vit_block_its_lr() -> None:
    backbone = load_backbone("random:vit_tiny16", device="cpu")  # 6 blocks
    head = torch.nn.Linear(backbone.embed_dim, 3)
    groups = param_groups(backbone, [head], lr=1e-4, head_lr=1e-2, layer_decay=0.5, weight_decay=0.05)
    lrs = _lr_by_name(groups)
    assert lrs["hf.embeddings.patch_embeddings.weight"][0] == pytest.approx(1e-4 * 0.5**7)
    for block in range(6):  # block i has depth i + 1: lr * decay ** (6 + 1 - (i + 1))
        assert lrs[f"hf.model.layer.{block}.attention.q_proj.weight"][0] == pytest.approx(1e-4 * 0.5 ** (6 - block))
        assert lrs[f"hf.model.layer.{block}.norm1.weight"][0] == pytest.approx(1e-4 * 0.5 ** (6 - block))
    assert lrs["hf.norm.weight"][0] == pytest.approx(1e-4)  # after the last block: full backbone LR
    assert lrs["weight"][0] == pytest.approx(1e-2) and lrs["bias"][0] == pytest.approx(1e-2)  # head
    assert sum(len(g["params"]) for g in groups) == len(list(backbone.parameters())) + 2


def test_layer_decay_follows_convnext_stages() -> None:
    backbone = load_backbone("random:convnext_test", device="cpu")  # 4 stages
    groups = param_groups(backbone, [], lr=1.0, head_lr=1.0, layer_decay=0.5, weight_decay=0.1)
    lrs = _lr_by_name(groups)
    for stage in range(4):
        assert lrs[f"hf.model.stages.{stage}.layers.0.pointwise_conv1.weight"][0] == pytest.approx(0.5 ** (4 - stage))
    assert lrs["hf.layer_norm.weight"][0] == pytest.approx(1.0)
    assert backbone.layer_id("hf.model.stages.2.downsample_layers.1.weight") == 3


def test_no_weight_decay_on_norms_biases_tokens_and_layer_scales() -> None:
    for source in ("random:vit_test16", "random:convnext_test"):
        backbone = load_backbone(source, device="cpu")
        lrs = _lr_by_name(param_groups(backbone, [], lr=1.0, head_lr=1.0, layer_decay=1.0, weight_decay=0.05))
        for name, param in backbone.named_parameters():
            no_decay = param.ndim <= 1 or name.endswith(("cls_token", "register_tokens", "mask_token"))
            assert lrs[name][1] == (0.0 if no_decay else 0.05), name
    vit = _lr_by_name(
        param_groups(
            load_backbone("random:vit_test16", device="cpu"), [], lr=1, head_lr=1, layer_decay=1, weight_decay=0.05
        )
    )
    assert vit["hf.embeddings.cls_token"][1] == vit["hf.embeddings.register_tokens"][1] == 0.0
    assert vit["hf.model.layer.0.layer_scale1.lambda1"][1] == 0.0
    assert vit["hf.model.layer.0.mlp.up_proj.weight"][1] == 0.05


def test_frozen_parameters_are_not_in_any_group() -> None:
    backbone = load_backbone("random:vit_test16", device="cpu")
    backbone.hf.model.layer[0].requires_grad_(False)
    names = set(_lr_by_name(param_groups(backbone, [], lr=1, head_lr=1, layer_decay=1, weight_decay=0)))
    assert not any(n.startswith("hf.model.layer.0.") for n in names) and "hf.model.layer.1.norm1.weight" in names
    backbone.requires_grad_(False)
    with pytest.raises(ConfigError, match="Nothing to train"):
        param_groups(backbone, [], lr=1, head_lr=1, layer_decay=1, weight_decay=0)


def test_schedules() -> None:
    cos = cosine_schedule(100, 10, min_ratio=0.1)
    assert cos(0) == pytest.approx(1 / 11) and cos(9) == pytest.approx(10 / 11) and cos(10) == pytest.approx(1.0)
    assert cos(55) == pytest.approx(0.1 + 0.9 * 0.5) and cos(100) == pytest.approx(0.1)
    sgdr = cosine_restarts(20, mult=2.0)
    assert sgdr(0) == sgdr(20) == sgdr(60) == pytest.approx(1.0)  # cycles of 20, 40, 80 steps
    assert sgdr(10) == pytest.approx(0.5) and sgdr(40) == pytest.approx(0.5)
    step = step_decay(30, gamma=0.1, warmup_steps=5)
    assert step(4) == pytest.approx(5 / 6) and step(5) == 1.0 and step(34) == 1.0 and step(35) == pytest.approx(0.1)


def test_scheduler_scales_every_group_from_its_own_peak() -> None:
    a, b = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))
    groups = [
        {"params": [a], "lr": 1e-3, "weight_decay": 0.1, "name": "x", "param_names": ["a"]},
        {"params": [b], "lr": 1e-5, "weight_decay": 0.0, "name": "y", "param_names": ["b"]},
    ]
    cfg = OptimConfig(scheduler="cosine", warmup=0.0, min_lr_ratio=0.0)
    optimizer = build_optimizer(groups, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs == pytest.approx([1e-3 * 0.5, 1e-5 * 0.5]) and math.isclose(lrs[0] / lrs[1], 100)
