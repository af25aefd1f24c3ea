"""Box drawings: predictions solid in their class colour with a tag, ground truth dashed, small images scaled up
by a whole factor so every box lands on its pixels."""

from __future__ import annotations

import numpy as np

from dinotune.report.boxes import class_colour, draw_boxes


def test_boxes_land_where_they_belong_in_their_class_colour():
    image = np.full((40, 60), 0.5, np.float32)  # grey, one channel: drawn as RGB
    pred = {"boxes": np.array([[10, 12, 30, 32]]), "scores": np.array([0.87]), "labels": np.array([1])}
    truth = {"boxes": np.array([[35, 5, 55, 25]]), "labels": np.array([2])}
    out = np.asarray(draw_boxes(image, pred, ["a", "b", "c"], truth=truth, min_size=240))
    assert out.shape == (160, 240, 3)  # scaled 4x: 240 / 60
    left_edge = out[14 * 4 : 32 * 4, 10 * 4]  # below the tag, the predicted box's left side
    assert (left_edge == class_colour(1)).all(axis=1).mean() > 0.95
    inside = out[20 * 4, 20 * 4]
    assert tuple(inside) == (128, 128, 128)  # the inside is untouched
    top_of_truth = out[5 * 4, 36 * 4 : 54 * 4]
    dashed = (top_of_truth == class_colour(2)).all(axis=1).mean()
    assert 0.3 < dashed < 0.8  # dashes and gaps
    tag = out[12 * 4 - 8 : 12 * 4 - 2, 10 * 4 : 10 * 4 + 30]  # the "b 0.87" tag above the box
    assert (tag == class_colour(1)).all(axis=2).mean() > 0.3 and (tag != class_colour(1)).any()
