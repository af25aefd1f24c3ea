"""Which head of a probe sweep is kept: a rule that stays sensible on small validation splits.

With 90 validation images one image is 1.1 accuracy points, and a grid of 150 heads always holds a
few that are lucky on exactly those images. The default rule, `score_within_se`, therefore treats
every head whose validation score is within one binomial standard error, sqrt(p (1 - p) / n_val), of
the best as equally good, and keeps the one among them with the lowest validation loss - a smooth,
proper score that a handful of lucky images cannot move much. On a large validation split the
standard error is tiny and the rule is plain "best score". `score` (best score, ties: lower loss)
and `loss` (lowest loss) are available too. Only validation figures are read: test labels never are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dinotune.errors import ConfigError

SELECTION_RULES: tuple[str, ...] = ("score_within_se", "score", "loss")
DEFAULT_SELECTION = "score_within_se"


@dataclass(frozen=True)
class HeadResult:
    """One row of the sweep table: a head's method and settings and its validation evaluation.

    SGD heads have `lr` and `weight_decay` and `best_epoch` (the epoch kept); L-BFGS heads have `c`
    (scikit-learn's inverse regularisation strength) and `best_epoch` holds their L-BFGS iterations.
    """

    feature_choice: str
    lr: float | None
    weight_decay: float | None
    best_epoch: int
    stopped_epoch: int | None
    val_score: float
    val_loss: float
    method: str = "sgd"
    c: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def select_head(table: Sequence[HeadResult], n_val: int, rule: str, choices: Sequence[str]) -> int:
    """Index of the kept head. Remaining ties go to the stronger regularisation, then the earlier choice."""
    if rule not in SELECTION_RULES:
        raise ConfigError(f"`selection` must be one of {', '.join(SELECTION_RULES)}, got {rule!r}.")
    order = {ch: i for i, ch in enumerate(choices)}

    def tail(r: HeadResult) -> tuple:
        return (r.c or 0.0, r.lr or 0.0, -(r.weight_decay or 0.0), order.get(r.feature_choice, 0), r.method)

    finite = [i for i, r in enumerate(table) if math.isfinite(r.val_score) and math.isfinite(r.val_loss)]
    if not finite:
        return 0
    if rule == "score":
        return min(finite, key=lambda i: (-table[i].val_score, table[i].val_loss, *tail(table[i])))
    if rule == "score_within_se":
        top = max(table[i].val_score for i in finite)
        se = math.sqrt(max(top * (1.0 - top), 0.0) / max(n_val, 1))
        finite = [i for i in finite if table[i].val_score >= top - se - 1e-9]
    return min(finite, key=lambda i: (table[i].val_loss, *tail(table[i])))
