"""Linear-probe sweep: selection, accuracy vs scikit-learn, batched == independent, early stopping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from dinotune.errors import ConfigError, DataError
from dinotune.heads.linear import LinearHead, available_feature_choices, build_input
from dinotune.tasks.probe import FeatureSet, HeadBank, sweep_linear_heads


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These problems are tiny: one intra-op thread is faster and immune to a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _blobs(n: int, d: int = 16, c: int = 4, seed: int = 0, spread: float = 2.0) -> FeatureSet:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=torch.Generator().manual_seed(123)) * spread
    y = torch.randint(0, c, (n,), generator=g)
    x = centres[y] + torch.randn(n, d, generator=g)
    patch = 0.3 * x + 0.5 * torch.randn(n, d, generator=g) + 4.0  # differently scaled kind
    return FeatureSet({"cls": x, "patch_mean": patch}, y)


@pytest.fixture(scope="module")
def digits() -> tuple[FeatureSet, FeatureSet, FeatureSet]:
    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    xtr, xva, ytr, yva = train_test_split(xtr, ytr, test_size=0.25, random_state=0, stratify=ytr)

    def fs(a: np.ndarray, b: np.ndarray) -> FeatureSet:
        return FeatureSet({"cls": torch.tensor(a, dtype=torch.float32)}, torch.tensor(b))

    return fs(xtr, ytr), fs(xva, yva), fs(xte, yte)


def _selection_key(r):
    return (-r.val_score, r.val_loss, r.lr, r.weight_decay)


def _nuisance(n: int, seed: int) -> FeatureSet:
    """Label in x0 buried under a shared nuisance n that x1 measures: the centroid direction (what a
    tiny learning rate reaches) scores ~65%, learning the cancellation x0 - x1 scores ~100%."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    noise = 3 * torch.randn(n, generator=g)
    x0 = (2 * y - 1).float() + noise + 0.1 * torch.randn(n, generator=g)
    x = torch.stack([x0, noise, torch.randn(n, generator=g)], 1)
    return FeatureSet({"cls": x, "patch_mean": torch.randn(n, 2, generator=g)}, y)


def test_selects_argmax_of_table_and_score_is_reproducible() -> None:
    train, val = _nuisance(512, 0), _nuisance(300, 1)
    res = sweep_linear_heads(
        train, val, lrs=(1e-5, 1e-3, 1e-1), weight_decays=(0.0, 1e-3), epochs=10, batch_size=64, progress=False,
        methods=("sgd",), selection="score",
    )  # fmt: skip
    scores = [r.val_score for r in res.table]
    assert len(res.table) == 3 * 2 * 2  # lrs x wds x {cls, cls+patch_mean}
    assert max(scores) - min(scores) > 0.2, "the grid must give clearly different validation accuracies"
    assert res.best == min(res.table, key=_selection_key)
    assert res.best.val_score == max(scores)
    head = res.linear_head()
    with torch.no_grad():
        logits = head(build_input(val.features, res.best.feature_choice))
    assert (logits.argmax(1) == val.labels).float().mean().item() == pytest.approx(res.best.val_score, abs=1e-6)
    assert F.cross_entropy(logits, val.labels).item() == pytest.approx(res.best.val_loss, rel=1e-4)


def test_matches_sklearn_logistic_regression(digits) -> None:
    train, val, test = digits
    res = sweep_linear_heads(train, val, test, epochs=30, batch_size=64, progress=False)
    scaler = StandardScaler().fit(train.features["cls"].numpy())
    with threadpool_limits(1):  # BLAS threads thrash on a busy 2-core machine
        clf = LogisticRegression(max_iter=5000).fit(scaler.transform(train.features["cls"].numpy()), train.labels)
    sk_acc = clf.score(scaler.transform(test.features["cls"].numpy()), test.labels)
    assert res.test_score is not None and res.test_metrics is not None
    assert res.test_score >= sk_acc - 0.015, (res.test_score, sk_acc)
    assert res.test_metrics["accuracy"] == res.test_score
    assert res.best.feature_choice == "cls" and res.epochs_run <= 30


def test_batched_head_equals_head_trained_alone(digits) -> None:
    train, val, _ = digits
    kw = {"epochs": 5, "batch_size": 100, "patience": None, "progress": False, "label_smoothing": 0.1}
    kw["methods"] = ("sgd",)
    full = sweep_linear_heads(train, val, lrs=(1e-3, 1e-2, 1e-1), weight_decays=(0.0, 1e-3), **kw)
    alone = sweep_linear_heads(train, val, lrs=(full.best.lr,), weight_decays=(full.best.weight_decay,), **kw)
    assert alone.best.best_epoch == full.best.best_epoch
    for key in ("weight", "bias"):
        torch.testing.assert_close(alone.state_dict[key], full.state_dict[key], atol=1e-5, rtol=0)


@pytest.mark.parametrize("multilabel", [False, True])
def test_head_bank_matches_torch_sgd(multilabel: bool) -> None:
    """The hand-written batched step equals nn.Linear + torch.optim.SGD + the torch loss, head by head."""
    g = torch.Generator().manual_seed(0)
    n, d, c = 96, 12, 5
    x = torch.randn(n, d, generator=g)
    y = (torch.rand(n, c, generator=g) < 0.3).float() if multilabel else torch.randint(0, c, (n,), generator=g)
    cw = torch.rand(c, generator=g) + 0.5
    lrs, wds = [0.3, 0.05, 0.01], [1e-2, 0.0, 1e-3]
    bank = HeadBank(d, c, lrs, wds, multilabel=multilabel, class_weights=cw, label_smoothing=0.1)
    refs = []
    for lr, wd in zip(lrs, wds, strict=True):
        lin = torch.nn.Linear(d, c)
        torch.nn.init.zeros_(lin.weight), torch.nn.init.zeros_(lin.bias)
        groups = [{"params": [lin.weight], "weight_decay": wd}, {"params": [lin.bias], "weight_decay": 0.0}]
        refs.append((lin, torch.optim.SGD(groups, lr=lr, momentum=0.9), lr))
    for step in range(12):
        idx = torch.randperm(n, generator=g)[:32]
        factor = 0.5 * (1 + math.cos(math.pi * step / 12))
        bank.train_step(x[idx], y[idx], factor)
        for lin, opt, lr in refs:
            for group in opt.param_groups:
                group["lr"] = lr * factor
            opt.zero_grad()
            if multilabel:
                loss = F.binary_cross_entropy_with_logits(lin(x[idx]), y[idx] * 0.9 + 0.05, pos_weight=cw)
            else:
                loss = F.cross_entropy(lin(x[idx]), y[idx], weight=cw, label_smoothing=0.1)
            loss.backward()
            opt.step()
    for h, (lin, _, _) in enumerate(refs):
        state = bank.head_state(h, best=False)
        torch.testing.assert_close(state["weight"], lin.weight.detach(), atol=1e-5, rtol=0)
        torch.testing.assert_close(state["bias"], lin.bias.detach(), atol=1e-5, rtol=0)
    assert bank.head_state(0, best=False)["weight"].abs().sum() > 0


def test_early_stopped_head_stops_changing() -> None:
    train = _blobs(128)
    bank = HeadBank(16, 4, [0.05, 0.05], [0.0, 0.0])
    x, y = train.features["cls"], train.labels
    patience = 2
    snapshots = []
    for epoch in range(1, 7):
        bank.train_step(x, y)
        snapshots.append(bank.weight.clone())
        # head 0: best score at epoch 1, never better afterwards; head 1 keeps improving
        score = torch.tensor([0.9 if epoch == 1 else 0.8, 0.1 * epoch])
        bank.record_evaluation(score, torch.ones(2), epoch, patience)
    assert bank.active.tolist() == [False, True]
    assert int(bank.stopped_epoch[0]) == 1 + patience and int(bank.best_epoch[0]) == 1
    # after stopping, head 0 is its best (epoch-1) weights and never moves again; head 1 still moves
    torch.testing.assert_close(bank.weight[:, 0], snapshots[0][:, 0], atol=0, rtol=0)
    torch.testing.assert_close(snapshots[-1][:, 0], snapshots[0][:, 0], atol=0, rtol=0)
    assert not torch.equal(snapshots[-1][:, 1], snapshots[-2][:, 1])
    torch.testing.assert_close(bank.head_state(0)["weight"], snapshots[0][:, 0].T)


def test_sweep_early_stopping_bookkeeping() -> None:
    train, val = _blobs(300), _blobs(200, seed=1)
    res = sweep_linear_heads(
        train,
        val,
        lrs=(1e-2, 1e-1),
        weight_decays=(0.0,),
        epochs=40,
        patience=3,
        batch_size=32,
        feature_choices=["cls"],
        progress=False,
        methods=("sgd",),
    )
    stopped = [r for r in res.table if r.stopped_epoch is not None]
    assert stopped, "easy blobs should saturate and stop early"
    assert all(r.stopped_epoch - r.best_epoch == 3 for r in stopped)
    if len(stopped) == len(res.table):
        assert res.epochs_run == max(r.stopped_epoch for r in stopped) < 40


def test_multilabel_bce_and_map(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(10, 3, generator=g)

    def split(n: int) -> FeatureSet:
        x = torch.randn(n, 10, generator=g)
        return FeatureSet({"cls": x}, (x @ proj > 0.3).float())

    train, val, test = split(400), split(200), split(200)
    res = sweep_linear_heads(
        train,
        val,
        test,
        lrs=(1e-3, 1e-2, 1e-1),
        weight_decays=(0.0,),
        epochs=10,
        batch_size=64,
        multilabel=True,
        progress=False,
    )
    assert res.metric == "map" and res.best.val_score > 0.9
    head = res.linear_head()
    probs = head.predict_proba(val.features["cls"])
    expected = skm.average_precision_score(val.labels.numpy(), probs.numpy(), average="macro")
    assert res.best.val_score == pytest.approx(expected, abs=1e-5)
    assert res.test_metrics is not None and res.test_metrics["map"] == res.test_score > 0.9
    head.save(tmp_path / "head.safetensors")
    loaded = LinearHead.load(tmp_path / "head.safetensors")
    assert loaded.multilabel and loaded.feature_choice == "cls"
    torch.testing.assert_close(loaded.predict_proba(val.features["cls"]), probs)


def test_feature_choices_and_determinism() -> None:
    def with_last4(fs: FeatureSet) -> FeatureSet:
        cls = fs.features["cls"]
        feats = {**fs.features, "cls_last4": torch.cat([cls, cls * 0.5, cls + 1, -cls], 1)}
        return FeatureSet(feats, fs.labels)

    train, val = with_last4(_blobs(200)), with_last4(_blobs(100, seed=1))
    assert available_feature_choices(train.features) == ["cls", "cls+patch_mean", "last4_cls+patch_mean"]
    kw = {"lrs": (1e-2,), "weight_decays": (0.0,), "epochs": 2, "batch_size": 50, "progress": False}
    kw["methods"] = ("sgd",)
    a = sweep_linear_heads(train, val, feature_choices=["last4_cls+patch_mean"], **kw)
    b = sweep_linear_heads(train, val, feature_choices=["last4_cls+patch_mean"], **kw)
    assert a.state_dict["weight"].shape == (4, 5 * 16) and a.mean.shape == (80,)
    assert a.table == b.table and torch.equal(a.state_dict["weight"], b.state_dict["weight"])
    c = sweep_linear_heads(train, val, feature_choices=["last4_cls+patch_mean"], seed=1, **kw)
    assert not torch.equal(a.state_dict["weight"], c.state_dict["weight"])


def test_user_errors_are_actionable() -> None:
    train, val = _blobs(50), _blobs(20, seed=1)
    with pytest.raises(DataError, match="cls_last4"):
        sweep_linear_heads(train, val, feature_choices=["last4_cls+patch_mean"], progress=False)
    with pytest.raises(DataError, match="multilabel=True"):
        sweep_linear_heads(FeatureSet(train.features, F.one_hot(train.labels).float()), val, progress=False)
    with pytest.raises(ConfigError, match="lrs"):
        sweep_linear_heads(train, val, lrs=(), progress=False)
    with pytest.raises(ConfigError, match="class_weights"):
        sweep_linear_heads(train, val, class_weights=torch.ones(3), progress=False)
