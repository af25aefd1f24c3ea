"""Mask2Former training modes and class aggregation on generated shapes (tiny backbone, hidden 32).

The workflow of the issue: a head trained on fine classes (here 4: background, red/blue square, green
disk) is fine-tuned on the user's coarse classes (background, square, disk) with only
`predictor.class_embed` learning, the head's classes summed into the user's. Its classifier is
re-initialised first, so that it starts knowing nothing of these classes (as a head from another
dataset); everything else must stay bit-identical while the aggregated mIoU goes up.
"""

from __future__ import annotations

import copy

import pytest
import torch

from dinotune.backbones import load_backbone
from dinotune.heads.mask2former.aggregate import aggregation_matrix
from dinotune.losses.mask2former import Mask2FormerLoss
from dinotune.metrics import confusion_matrix, scores
from dinotune.model.mask2former import build_mask_segmenter, set_trainable_parts
from tests.heads.m2f_shapes import AGGREGATE, HEAD_CLASSES, TO_USER, USER_CLASSES, as_tensors, shapes, tiny_config


def _train(model, images, masks, steps: int, lr: float, batch: int = 8) -> None:
    loss_fn = Mask2FormerLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    model.backbone.eval()
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(images), (batch,), generator=gen)
        loss = loss_fn(model.outputs(images[idx]), masks[idx], model.head.aggregation)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _miou(model, images, masks, n_classes: int) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(images).argmax(1)
    return float(scores(confusion_matrix(pred, masks, n_classes, 255))["miou"])


@pytest.fixture(scope="module")
def pretrained(one_torch_thread_module):
    """A head trained on the fine classes with a frozen backbone (the 'whole head trains' mode)."""
    torch.manual_seed(0)
    backbone = load_backbone("random:vit_test16", device="cpu", seed=0)
    backbone.set_trainable(False)
    model = build_mask_segmenter(backbone, tiny_config(), HEAD_CLASSES, HEAD_CLASSES)
    images, masks = as_tensors(*shapes(48, seed=0))
    start = _miou(model, images, masks, 4)
    _train(model, images, masks, steps=40, lr=3e-3)
    return model, start, _miou(model, images, masks, 4)


@pytest.fixture(scope="module")
def one_torch_thread_module():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_frozen_backbone_whole_head_learns_the_fine_classes(pretrained) -> None:
    _, start, end = pretrained
    print(f"fine-class mIoU {start:.3f} -> {end:.3f}")
    assert end > start + 0.25, (start, end)
    assert end > 0.5


def test_class_embed_only_with_aggregation_keeps_the_rest_bit_identical(pretrained) -> None:
    trained, _, _ = pretrained
    matrix = aggregation_matrix(AGGREGATE, HEAD_CLASSES)
    model = build_mask_segmenter(trained.backbone, tiny_config(), USER_CLASSES, HEAD_CLASSES, AGGREGATE)
    model.head.load_state_dict(trained.head.state_dict())
    torch.manual_seed(1)
    model.head.predictor.class_embed.reset_parameters()  # a classifier that knows nothing of these classes
    assert torch.equal(model.head.aggregation, matrix)
    n = set_trainable_parts(model.head, ["predictor.class_embed"])
    assert n == 32 * 5 + 5  # Linear(hidden 32, 4 classes + no object)
    before = copy.deepcopy({**model.head.state_dict(), **model.backbone.state_dict()})
    images, fine = as_tensors(*shapes(48, seed=2))
    user = torch.from_numpy(TO_USER)[fine]
    start = _miou(model, images, user, 3)
    _train(model, images, user, steps=15, lr=5e-2)
    end = _miou(model, images, user, 3)
    print(f"aggregated mIoU {start:.3f} -> {end:.3f}")
    assert end > start + 0.1, (start, end)
    after = {**model.head.state_dict(), **model.backbone.state_dict()}
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["predictor.class_embed.weight", "predictor.class_embed.bias"]


def test_semantic_scores_sum_the_aggregated_head_classes(pretrained) -> None:
    trained, _, _ = pretrained
    aggregated = build_mask_segmenter(trained.backbone, tiny_config(), USER_CLASSES, HEAD_CLASSES, AGGREGATE)
    aggregated.head.load_state_dict(trained.head.state_dict())
    images, _ = as_tensors(*shapes(2, seed=5))
    trained.eval(), aggregated.eval()
    with torch.no_grad():
        fine = trained.head.semantic(trained.outputs(images), (64, 64))
        coarse = aggregated.head.semantic(aggregated.outputs(images), (64, 64))
    torch.testing.assert_close(coarse[:, 0], fine[:, 0])
    torch.testing.assert_close(coarse[:, 1], fine[:, 1] + fine[:, 2])
    torch.testing.assert_close(coarse[:, 2], fine[:, 3])
