"""The L-BFGS path equals scikit-learn's LogisticRegression; selection reads validation only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from dinotune.errors import ConfigError
from dinotune.tasks.head_selection import HeadResult, select_head
from dinotune.tasks.logreg import fit_logistic_path
from dinotune.tasks.probe import FeatureSet, sweep_linear_heads


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return StandardScaler().fit_transform(x[:600]), y[:600]


@pytest.mark.parametrize("weighted", [False, True])
def test_path_matches_sklearn_multinomial(digits, weighted: bool) -> None:
    x, y = digits
    cw = np.linspace(0.5, 2.0, 10)
    cs = (0.01, 0.3)
    path = fit_logistic_path(torch.tensor(x, dtype=torch.float32), torch.tensor(y), 10, cs, tol=1e-5, max_iter=2000,
                             class_weights=torch.tensor(cw) if weighted else None)  # fmt: skip
    for point in path:
        with threadpool_limits(1):
            sk = LogisticRegression(C=point.c, tol=1e-8, max_iter=5000,
                                    class_weight=dict(enumerate(cw)) if weighted else None).fit(x, y)  # fmt: skip
        ours = torch.softmax(torch.tensor(x, dtype=torch.float32) @ point.weight + point.bias, 1)
        np.testing.assert_allclose(ours.numpy(), sk.predict_proba(x), atol=2e-3)
        assert point.iterations > 0
    assert not torch.allclose(path[0].weight, path[1].weight, atol=1e-2)  # C really changes the fit


def test_path_matches_sklearn_one_vs_rest_multilabel(digits) -> None:
    x, y = digits
    multi = np.stack([y % 2 == 0, y < 5, y == 7], 1).astype(np.float32)
    point = fit_logistic_path(torch.tensor(x, dtype=torch.float32), torch.tensor(multi), 3, (0.1,), multilabel=True,
                              tol=1e-6, max_iter=2000)[0]  # fmt: skip
    with threadpool_limits(1):
        sk = OneVsRestClassifier(LogisticRegression(C=0.1, tol=1e-8, max_iter=5000)).fit(x, multi)
    ours = torch.sigmoid(torch.tensor(x, dtype=torch.float32) @ point.weight + point.bias)
    np.testing.assert_allclose(ours.numpy(), sk.predict_proba(x), atol=2e-3)


def test_bad_grid_is_one_line() -> None:
    with pytest.raises(ConfigError, match="cs"):
        fit_logistic_path(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]), 2, (0.0,))


def _row(score: float, loss: float, c: float) -> HeadResult:
    return HeadResult("cls", None, None, 1, None, score, loss, method="lbfgs", c=c)


def test_selection_rule_prefers_low_loss_within_a_standard_error() -> None:
    # 0.80 vs 0.78 is one image of 90 apart: within the standard error (0.042), so loss decides
    table = [_row(0.80, 0.90, 1.0), _row(0.78, 0.45, 0.1), _row(0.70, 0.40, 0.01)]
    assert select_head(table, 90, "score_within_se", ["cls"]) == 1
    assert select_head(table, 90, "score", ["cls"]) == 0
    assert select_head(table, 90, "loss", ["cls"]) == 2
    # with 100k validation images the standard error is tiny: the best score wins
    assert select_head(table, 100_000, "score_within_se", ["cls"]) == 0
    with pytest.raises(ConfigError, match="selection"):
        select_head(table, 90, "test", ["cls"])


def _splits(seed: int = 0) -> tuple[FeatureSet, FeatureSet, FeatureSet]:
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = torch.tensor(x[order], dtype=torch.float32), torch.tensor(y[order])
    parts = [(0, 500), (500, 650), (650, 1000)]
    return tuple(FeatureSet({"cls": x[a:b]}, y[a:b]) for a, b in parts)  # type: ignore[return-value]


def test_both_methods_compared_and_test_labels_never_used_for_selection() -> None:
    train, val, test = _splits()
    kw = {"epochs": 8, "batch_size": 64, "progress": False, "cs": (0.01, 0.1, 1.0), "methods": ("sgd", "lbfgs")}
    res = sweep_linear_heads(train, val, test, **kw)
    assert {r.method for r in res.table} == {"sgd", "lbfgs"}
    assert len([r for r in res.table if r.method == "lbfgs"]) == 3
    shuffled = FeatureSet(
        test.features, test.labels[torch.randperm(len(test), generator=torch.Generator().manual_seed(1))]
    )
    other = sweep_linear_heads(train, val, shuffled, **kw)
    assert other.best == res.best and other.table == res.table
    torch.testing.assert_close(other.state_dict["weight"], res.state_dict["weight"], atol=0, rtol=0)
    assert other.test_score < res.test_score - 0.5  # the permutation did reach the test scoring


def test_kept_lbfgs_head_is_the_path_point_and_refit_uses_train_and_val() -> None:
    train, val, test = _splits(1)
    kw = {"methods": ("lbfgs",), "cs": (0.01, 0.1), "progress": False}
    res = sweep_linear_heads(train, val, test, **kw)
    assert res.best.method == "lbfgs" and res.best.c in (0.01, 0.1) and res.extras["refit"] is False
    x = (train.features["cls"] - res.mean) / res.std
    point = next(p for p in fit_logistic_path(x, train.labels, 10, (0.01, 0.1)) if p.c == res.best.c)
    torch.testing.assert_close(res.state_dict["weight"], point.weight.T, atol=1e-5, rtol=0)
    refit = sweep_linear_heads(train, val, test, refit=True, **kw)
    assert refit.extras["refit"] is True and refit.best == res.best
    both = torch.cat([train.features["cls"], val.features["cls"]])
    torch.testing.assert_close(refit.mean, both.mean(0), atol=1e-4, rtol=0)
    assert not torch.allclose(refit.state_dict["weight"], res.state_dict["weight"], atol=1e-3)


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("use_numpy", [True, False])  # False: the torch formulas CUDA runs, here on the CPU
def test_closed_form_objective_equals_autograd(multilabel: bool, use_numpy: bool) -> None:
    from dinotune.tasks.logreg import _Objective

    gen = torch.Generator().manual_seed(0)
    n, d, k, eps, c = 40, 7, 4, 0.1, 0.3
    x = torch.randn(n, d, generator=gen)
    y = (torch.rand(n, k, generator=gen) > 0.5).float() if multilabel else torch.randint(0, k, (n,), generator=gen)
    cw = torch.rand(k, generator=gen) + 0.5
    objective = _Objective(x, y, k, multilabel, cw, eps, use_numpy=use_numpy)
    objective.penalty = 0.5 / (c * n)
    theta = torch.randn(d * k + k, generator=gen, dtype=torch.float64)
    value, grad = objective(theta.numpy())
    w = theta[: d * k].view(d, k).float().requires_grad_(True)
    b = theta[d * k :].float().requires_grad_(True)
    z = x @ w + b
    if multilabel:
        data = F.binary_cross_entropy_with_logits(z, y * (1 - eps) + eps / 2, pos_weight=cw, reduction="sum")
    else:
        data = F.cross_entropy(z, y, weight=cw, label_smoothing=eps, reduction="sum")
    reference = data / n + objective.penalty * w.pow(2).sum()
    reference.backward()
    assert value == pytest.approx(float(reference), rel=1e-5)
    np.testing.assert_allclose(grad, torch.cat([w.grad.flatten(), b.grad]).numpy(), rtol=1e-4, atol=1e-6)


def test_default_multilabel_probe_matches_one_vs_rest_sklearn_on_map(digits) -> None:
    """Generated multi-label case (digits labelled with 4 overlapping attributes): the default sweep's test mAP
    is at least scikit-learn's OneVsRest LogisticRegression (train-standardised, as the sweep standardises) with
    C chosen on the same validation mAP."""
    from sklearn.metrics import average_precision_score

    x, y = digits
    multi = np.stack([y % 2 == 0, y < 5, y % 3 == 0, (y == 1) | (y == 7)], 1).astype(np.float32)
    parts = {"train": slice(0, 300), "val": slice(300, 420), "test": slice(420, 600)}
    sets = {
        k: FeatureSet({"cls": torch.tensor(x[p], dtype=torch.float32)}, torch.tensor(multi[p]))
        for k, p in parts.items()
    }
    ours = sweep_linear_heads(sets["train"], sets["val"], sets["test"], multilabel=True, progress=False)
    scaler = StandardScaler().fit(x[parts["train"]])
    xs, ys = {k: scaler.transform(x[p]) for k, p in parts.items()}, {k: multi[p] for k, p in parts.items()}
    best = (-1.0, None)
    with threadpool_limits(1):
        for c in (1e-3, 1e-2, 1e-1, 1.0, 10.0):
            model = OneVsRestClassifier(LogisticRegression(C=c, max_iter=1000)).fit(xs["train"], ys["train"])
            val = average_precision_score(ys["val"], model.predict_proba(xs["val"]), average="macro")
            best = max(best, (val, model), key=lambda t: t[0])
    theirs = average_precision_score(ys["test"], best[1].predict_proba(xs["test"]), average="macro")
    assert ours.best.method == "lbfgs" and ours.test_score >= theirs - 0.005
