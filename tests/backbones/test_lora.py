"""LoRA: adapters only on the chosen linears, < 2% of a ViT-S trained, and merging changes nothing."""

from __future__ import annotations

import copy

import pytest
import torch

from dinotune.backbones import load_backbone
from dinotune.backbones.lora import LoraConfig, has_lora, merge_lora
from dinotune.errors import ConfigError
from dinotune.heads.linear import new_linear_head
from dinotune.model import Classifier
from dinotune.training.modes import prepare_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # 2 shared cores: more threads only spin


def _perturb_adapters(module: torch.nn.Module) -> None:
    """lora_B starts at zero (an identity update); give it values so merging has something to fold."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)


@pytest.mark.parametrize("source", ["random:vit_test16", "random:convnext_test"])
def test_merged_weights_give_the_adapter_outputs(source: str) -> None:
    backbone = load_backbone(source, device="cpu")
    with torch.no_grad():  # ConvNeXt layer scales start at 1e-6: make the adapted branches count
        for name, param in backbone.named_parameters():
            if name.endswith("gamma"):
                param.fill_(1.0)
    reference = copy.deepcopy(backbone).eval()
    reference_keys = {k: v.shape for k, v in backbone.hf.state_dict().items()}
    backbone.apply_lora(LoraConfig(rank=4, alpha=8, dropout=0.1))
    _perturb_adapters(backbone)
    backbone.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        adapted = backbone.forward_features(x)["x_norm_patchtokens"]
        merge_lora(backbone)
        merged = backbone.forward_features(x)["x_norm_patchtokens"]
    assert not has_lora(backbone)
    assert {k: v.shape for k, v in backbone.hf.state_dict().items()} == reference_keys  # a plain HF model again
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert (adapted - reference.forward_features(x)["x_norm_patchtokens"]).abs().max() > 1e-3


def test_lora_trains_under_two_percent_of_a_vit_s() -> None:
    backbone = load_backbone("random:vits16", device="cpu")
    model = Classifier(backbone, new_linear_head(backbone.feature_widths, 10, "cls+patch_mean", False, 0))
    counts = prepare_model(model, "lora", lora=LoraConfig())
    fraction = counts["trainable"] / counts["total"]
    assert 0.005 < fraction < 0.02, fraction
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("head.") for n in trainable)
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable if "lora_" in n}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"}


def test_lora_targets_are_configurable_and_checked() -> None:
    backbone = load_backbone("random:vit_test16", device="cpu")
    count = backbone.apply_lora(LoraConfig(rank=2, targets=["q_proj", "v_proj"]))
    assert count == 2 * 2 * 2 * (64 + 64)  # 2 blocks x 2 targets x (A: r x 64 + B: 64 x r)
    with pytest.raises(ConfigError, match="not linear layers"):
        load_backbone("random:vit_test16", device="cpu").apply_lora(LoraConfig(targets=["qkv"]))
