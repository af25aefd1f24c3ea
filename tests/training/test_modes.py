"""What each mode trains: frozen parts stay bit-identical through AdamW steps with weight decay; the
memory options (activation checkpointing, drop path) and mixing behave."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from dinotune.backbones import load_backbone
from dinotune.heads.linear import new_linear_head
from dinotune.model import Classifier
from dinotune.tasks.classify import RegularizationConfig, mix_batch, size_at
from dinotune.training.modes import prepare_model
from dinotune.training.optim import OptimConfig, build_optimizer, param_groups

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # 2 shared cores: more threads only spin


def _model(source: str = "random:vit_tiny16") -> Classifier:
    backbone = load_backbone(source, device="cpu")
    return Classifier(backbone, new_linear_head(backbone.feature_widths, 5, "cls+patch_mean", False, 0))


def _train(model: Classifier, steps: int = 3) -> None:
    groups = param_groups(model.backbone, [model.head], lr=1e-2, head_lr=1e-2, layer_decay=0.9, weight_decay=0.5)
    optimizer = build_optimizer(groups, OptimConfig())
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 5, (4,), generator=gen)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()


def _changed(before: dict[str, torch.Tensor], model: Classifier) -> set[str]:
    return {k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])}


def test_partial_freezes_embeddings_and_first_blocks() -> None:
    model = _model()
    prepare_model(model, "partial", freeze_blocks=4)
    before = copy.deepcopy(model.state_dict())
    _train(model)
    changed = _changed(before, model)
    frozen = [
        k
        for k in before
        if k.startswith(("backbone.hf.embeddings", *(f"backbone.hf.model.layer.{i}." for i in range(4))))
    ]
    assert frozen and not changed & set(frozen)
    assert "backbone.hf.model.layer.5.mlp.up_proj.weight" in changed and "head.linear.weight" in changed


def test_linear_mode_changes_only_the_head() -> None:
    model = _model()
    counts = prepare_model(model, "linear")
    before = copy.deepcopy(model.state_dict())
    _train(model)
    assert _changed(before, model) == {"head.linear.weight", "head.linear.bias"}
    assert counts["trainable"] == model.head.linear.weight.numel() + 5


def test_lora_mode_leaves_base_weights_untouched() -> None:
    model = _model()
    prepare_model(model, "lora")
    before = copy.deepcopy(model.state_dict())
    _train(model)
    changed = _changed(before, model)
    assert changed and all("lora_B" in k or "lora_A" in k or k.startswith("head.") for k in changed)


@pytest.mark.parametrize("source", ["random:vit_test16", "random:convnext_test"])
def test_activation_checkpointing_gives_the_same_gradients(source: str) -> None:
    grads = []
    for checkpointing in (False, True):
        model = _model(source)
        prepare_model(model, "finetune", activation_checkpointing=checkpointing)
        model.train()
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(0)  # DINOv3's RoPE jitters its coordinates in training mode
        model(x).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)
    if source.startswith("random:vit"):
        assert all(layer.gradient_checkpointing for layer in model.backbone.blocks)


def test_drop_path_is_random_in_training_and_off_in_eval() -> None:
    model = _model("random:vit_test16")
    prepare_model(model, "finetune", drop_path_rate=0.5)
    x = torch.randn(8, 3, 32, 32)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    assert model.backbone.hf.config.drop_path_rate == 0.5


def test_mixing_keeps_targets_distributions() -> None:
    images, labels = torch.randn(6, 3, 16, 16), F.one_hot(torch.arange(6) % 3, 3).float()
    for cfg in (RegularizationConfig(mixup_alpha=0.8), RegularizationConfig(cutmix_alpha=1.0)):
        mixed, targets = mix_batch(images, labels, cfg, torch.Generator().manual_seed(0))
        assert mixed.shape == images.shape and not torch.equal(mixed, images)
        torch.testing.assert_close(targets.sum(1), torch.ones(6))
    same = mix_batch(images, labels, RegularizationConfig(), torch.Generator())
    assert same[0] is images and same[1] is labels


def test_resolution_schedule() -> None:
    schedule = {0: 224, 5: 512}
    assert [size_at(schedule, e) for e in (0, 4, 5, 9)] == [224, 224, 512, 512]
    assert size_at(None, 3) is None
