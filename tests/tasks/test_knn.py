"""The kNN classifier must match a brute-force reference of the DINO weighted vote."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinotune.errors import ConfigError, DataError
from dinotune.tasks.knn import knn_classify, select_knn

KS = (1, 5, 10, 40, 100)  # 100 > N_train: capped


def _reference(train: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int, t: float) -> np.ndarray:
    """One query at a time: cosine similarities, sort, exp(sim / T) votes, normalise."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    multilabel = labels.ndim == 2
    c = labels.shape[1] if multilabel else labels.max() + 1
    out = np.zeros((len(queries), c))
    for i, q in enumerate(queries):
        sims = train @ (q / np.linalg.norm(q))
        order = np.argsort(-sims)[: min(k, len(train))]
        total = 0.0
        for j in order:
            w = np.exp(sims[j] / t)
            total += w
            if multilabel:
                out[i] += w * labels[j]
            else:
                out[i, labels[j]] += w
        out[i] /= total
    return out


@pytest.fixture()
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(60, 8, generator=g),
        torch.randint(0, 4, (60,), generator=g),
        torch.randn(23, 8, generator=g),
    )


def test_matches_brute_force_for_each_k(data) -> None:
    train, labels, queries = data
    res = knn_classify(train, labels, queries, ks=KS, chunk_size=7)  # chunking exercised
    assert res.effective_k == {1: 1, 5: 5, 10: 10, 40: 40, 100: 60}
    for k in KS:
        ref = _reference(train.double().numpy(), labels.numpy(), queries.double().numpy(), k, 0.07)
        np.testing.assert_allclose(res.probs[k].numpy(), ref, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(res.predictions[k].numpy(), ref.argmax(1))
    assert not torch.allclose(res.probs[1], res.probs[40])  # k really changes the vote


def test_multilabel_matches_brute_force(data) -> None:
    train, _, queries = data
    multi = (torch.rand(60, 3, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    res = knn_classify(train, multi, queries, ks=(5, 20), temperature=0.1)
    for k in (5, 20):
        ref = _reference(train.double().numpy(), multi.numpy(), queries.double().numpy(), k, 0.1)
        np.testing.assert_allclose(res.probs[k].numpy(), ref, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(res.predictions[k].numpy(), (ref > 0.5).astype(np.int64))


def test_num_classes_and_errors(data) -> None:
    train, labels, queries = data
    res = knn_classify(train, labels, queries, ks=(3,), num_classes=9)
    assert res.probs[3].shape == (23, 9)
    torch.testing.assert_close(res.probs[3].sum(1), torch.ones(23))
    with pytest.raises(DataError):
        knn_classify(train, labels, queries[:, :5])
    with pytest.raises(ConfigError):
        knn_classify(train, labels, queries, ks=(0,))


def _clustered(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    centres = torch.randn(4, 8, generator=torch.Generator().manual_seed(7)) * 1.5
    return centres[labels] + torch.randn(n, 8, generator=g), labels


def test_k_and_temperature_chosen_on_val_and_capped_by_train_size() -> None:
    (xtr, ytr), (xva, yva) = _clustered(60, 0), _clustered(40, 1)

    def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
        return float((probs.argmax(1) == labels).float().mean())

    sel = select_knn(xtr, ytr, xva, yva, accuracy, ks=(1, 10, 200), temperatures=(0.02, 0.5))
    assert {k for k, _ in sel.val_scores} == {1, 10, 60}  # 200 > 60 train samples: tried once, as 60
    best = max(sel.val_scores.values())
    assert sel.val_scores[(sel.k, sel.temperature)] == best
    for (k, t), v in sel.val_scores.items():
        ref = accuracy(knn_classify(xtr, ytr, xva, ks=(k,), temperature=t).probs[k], yva)
        assert v == pytest.approx(ref)
    with pytest.raises(ConfigError, match="temperatures"):
        select_knn(xtr, ytr, xva, yva, accuracy, temperatures=(0.0,))


def test_probe_knn_never_reads_test_labels_for_selection(tmp_path) -> None:
    """The probe's kNN report: k and T are the same whatever the test labels are; only test scores move."""
    from types import SimpleNamespace

    from dinotune.tasks.head_bank import FeatureSet
    from dinotune.verbs.probe import ProbeConfig, _knn_metrics

    (xtr, ytr), (xva, yva), (xte, yte) = _clustered(50, 0), _clustered(30, 1), _clustered(30, 2)
    spec = SimpleNamespace(multilabel=False, num_classes=4, classes=["a", "b", "c", "d"])
    cfg = ProbeConfig(data={"root": tmp_path}, knn={"ks": [1, 5, 200], "temperatures": [0.02, 0.3]})

    def report(test_labels: torch.Tensor) -> dict:
        sets = {"train": FeatureSet({"cls": xtr}, ytr), "val": FeatureSet({"cls": xva}, yva),
                "test": FeatureSet({"cls": xte}, test_labels)}  # fmt: skip
        return _knn_metrics(cfg, sets, spec)

    real = report(yte)
    flipped = report((yte + 1) % 4)  # every test label wrong
    for key in ("k", "temperature", "val_scores", "val"):
        assert real[key] == flipped[key]
    assert real["k"] <= 50 and set(real["test"]) == {"k=1", "k=5", "k=50"}
    assert real["summary"]["test/accuracy"] > flipped["summary"]["test/accuracy"]
