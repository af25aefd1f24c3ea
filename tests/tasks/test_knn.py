"""The kNN classifier must match a brute-force reference of the DINO weighted vote."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinotune.errors import ConfigError, DataError
from dinotune.tasks.knn import knn_classify

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
