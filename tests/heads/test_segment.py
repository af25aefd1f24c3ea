"""Losses (ignore index, Dice, class weights), heads (shapes, layers) and the model folder round trip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dinotune.backbones import load_backbone
from dinotune.errors import CheckpointError
from dinotune.heads.segment import HeadConfig, LinearSegHead, MultiScaleDecoder, layer_indices
from dinotune.losses.segmentation import SegmentationLoss, SegmentationLossConfig, dice_loss, pixel_class_weights
from dinotune.model import ModelCard, build_segmenter, load_model, read_card, save_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # 2 shared cores: more threads only spin


def test_ce_ignores_ignore_pixels() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 4))
    target[:, :2] = 255
    loss = SegmentationLoss(SegmentationLossConfig(kind="ce"))(logits, target)
    keep = target != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], target[keep])
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert logits.grad is not None and logits.grad[:, :, :2].abs().sum() == 0  # no gradient from ignored pixels


def test_all_ignored_batch_gives_zero_not_nan() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    for kind in ("ce", "dice", "ce_dice"):
        loss = SegmentationLoss(SegmentationLossConfig(kind=kind))(logits, torch.full((1, 2, 2), 255))
        assert torch.isfinite(loss)
    loss.backward()


def test_dice_perfect_and_wrong() -> None:
    target = torch.tensor([[[0, 1], [2, 255]]])
    perfect = F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 100
    assert float(dice_loss(perfect, target, eps=1e-6)) == pytest.approx(0.0, abs=1e-4)
    wrong = perfect.roll(1, dims=1)
    assert float(dice_loss(wrong, target, eps=1e-6)) == pytest.approx(1.0, abs=1e-4)
    # the ignored pixel's prediction does not matter
    changed = perfect.clone()
    changed[0, :, 1, 1] = torch.tensor([0.0, 0.0, 100.0])
    assert float(dice_loss(changed, target)) == pytest.approx(float(dice_loss(perfect, target)))


def test_ce_dice_is_sum_and_class_weights_apply() -> None:
    logits, target = torch.randn(2, 3, 5, 5), torch.randint(0, 3, (2, 5, 5))
    ce = SegmentationLoss(SegmentationLossConfig(kind="ce"))(logits, target)
    both = SegmentationLoss(SegmentationLossConfig(kind="ce_dice", dice_weight=0.5))(logits, target)
    torch.testing.assert_close(both, ce + 0.5 * dice_loss(logits, target))
    w = torch.tensor([0.0, 1.0, 2.0])
    weighted = SegmentationLoss(SegmentationLossConfig(), class_weights=w)(logits, target)
    torch.testing.assert_close(weighted, F.cross_entropy(logits, target, weight=w))


def test_pixel_class_weights() -> None:
    masks = [torch.tensor([[0, 0, 0, 1], [0, 0, 255, 1]])]  # 5 x class 0, 2 x class 1, class 2 absent
    w = pixel_class_weights(masks, 3)
    assert w[2] == 0 and float(w[0] + w[1]) == pytest.approx(2.0)
    assert float(w[1] / w[0]) == pytest.approx(5 / 2)
    assert float(
        pixel_class_weights(masks, 3, mode="sqrt_inverse")[1] / pixel_class_weights(masks, 3, mode="sqrt_inverse")[0]
    ) == pytest.approx((5 / 2) ** 0.5)


def test_layer_indices() -> None:
    assert layer_indices(12, HeadConfig(type="linear", layers="last")) == [11]
    assert layer_indices(12, HeadConfig(type="linear", layers="last4")) == [8, 9, 10, 11]
    assert layer_indices(12, HeadConfig(type="decoder")) == [2, 5, 8, 11]
    assert layer_indices(24, HeadConfig(type="decoder")) == [5, 11, 17, 23]
    assert layer_indices(2, HeadConfig(type="decoder")) == [0, 1]


def test_heads_shapes_vit_and_convnext_maps() -> None:
    vit_maps = [torch.randn(2, 8, 4, 6) for _ in range(4)]
    assert LinearSegHead([8] * 4, 5)(vit_maps).shape == (2, 5, 4, 6)
    assert MultiScaleDecoder([8] * 4, 5, width=16)(vit_maps).shape == (2, 5, 16, 24)  # stride 4 for /16 tokens
    pyramid = [torch.randn(2, c, 32 // s, 32 // s) for c, s in ((4, 4), (8, 8), (16, 16), (32, 32))]
    assert MultiScaleDecoder([4, 8, 16, 32], 3, width=16)(pyramid).shape == (2, 3, 8, 8)
    assert LinearSegHead([4, 8, 16, 32], 3)(pyramid).shape == (2, 3, 8, 8)


@pytest.mark.parametrize(("source", "head"), [("random:vit_test16", "linear"), ("random:convnext_test", "decoder")])
def test_segmenter_any_size_and_folder_round_trip(tmp_path, source: str, head: str) -> None:
    from dinotune.data.preprocessing import Preprocessing

    backbone = load_backbone(source, device="cpu")
    cfg = HeadConfig(type=head, width=16)
    model = build_segmenter(backbone, cfg, 4).eval()
    image = torch.randn(1, 3, 50, 70)  # not a multiple of 16 or 32: padded inside, cropped back
    with torch.no_grad():
        out = model(image)
    assert out.shape == (1, 4, 50, 70)
    card = ModelCard(
        task="segment",
        classes=list("abcd"),
        colours=[[0, 0, 0]] * 4,
        preprocessing=Preprocessing(64),
        backbone={"source": source, "in_chans": 3, "seed": 0},
        head={"type": cfg.type, "config": cfg.model_dump()},
    )
    save_model(tmp_path, model, card, save_backbone=False)
    loaded, loaded_card = load_model(tmp_path, device="cpu")
    assert loaded_card.classes == list("abcd") and loaded.layers == model.layers
    with torch.no_grad():
        torch.testing.assert_close(loaded(image), out)
    assert read_card(tmp_path).head["type"] == head and read_card(tmp_path).task == "segment"


def test_not_a_model_folder(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"model\.json"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text('{"classes": []}')
    with pytest.raises(CheckpointError, match="not a dinotune model card"):
        load_model(tmp_path)
