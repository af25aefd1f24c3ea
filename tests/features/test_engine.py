"""The extraction engine choice: ONNX Runtime kept only when it agrees with eager PyTorch, the exported graph
reused across runs, and every failure (a mismatch, a build error) falling back to eager."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from dinotune import load_backbone
from dinotune.errors import ConfigError
from dinotune.features import engines as engines_module
from dinotune.features.engine import CHECK_IMAGES, PARITY, FeatureExtractor, requested_engine
from dinotune.features.extract import extract_features

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("random:vit_test16", device="cpu").eval()


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory, backbone) -> Path:
    """One export for the module (a few seconds), reused by every test as a later run would reuse it."""
    folder = tmp_path_factory.mktemp("engines")
    FeatureExtractor(backbone, engine="onnxruntime", graph_dir=folder)(torch.randn(2, 3, 32, 32))
    return folder


def test_onnxruntime_agrees_with_eager_and_reuses_its_graph(backbone, graph_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(engines_module, "export_graph", lambda *a, **k: pytest.fail("the graph should be reused"))
    extractor = FeatureExtractor(backbone, engine="onnxruntime", graph_dir=graph_dir)
    x = torch.randn(5, 3, 32, 32)
    first = extractor(x)
    assert extractor.choice is not None and extractor.choice.name == "onnxruntime"
    assert extractor.choice.max_abs_diff is not None and extractor.choice.max_abs_diff <= PARITY
    later = torch.randn(3, 3, 32, 32)
    for batch, got in ((x, first), (later, extractor(later))):
        expected = extract_features(backbone, batch)
        assert set(got) == set(expected)
        for kind in expected:
            assert got[kind].shape == expected[kind].shape
            assert float((got[kind] - expected[kind]).abs().max()) <= PARITY


def test_auto_uses_an_existing_graph_but_does_not_export_for_a_small_job(backbone, graph_dir, tmp_path) -> None:
    cached = FeatureExtractor(backbone, graph_dir=graph_dir, expected_images=10)
    cached(torch.randn(4, 3, 32, 32))
    assert cached.choice.seconds.keys() == {"eager", "onnxruntime"}  # checked side by side
    small = FeatureExtractor(backbone, graph_dir=tmp_path, expected_images=10)
    small(torch.randn(4, 3, 32, 32))
    assert small.choice.name == "eager" and "fewer than" in small.choice.reason
    assert not list(tmp_path.iterdir())


def test_a_disagreeing_engine_falls_back_to_eager(backbone, graph_dir, monkeypatch, caplog) -> None:
    real = engines_module.OnnxEngine.__call__
    monkeypatch.setattr(
        engines_module.OnnxEngine, "__call__", lambda self, x: {k: v + 1e-2 for k, v in real(self, x).items()}
    )
    extractor = FeatureExtractor(backbone, engine="onnxruntime", graph_dir=graph_dir)
    x = torch.randn(4, 3, 32, 32)
    with caplog.at_level(logging.WARNING):
        got = extractor(x)
    assert extractor.choice.name == "eager" and "differs from eager" in caplog.text
    expected = extract_features(backbone, x)  # eager (computed in two parts when a verdict is on record)
    assert all(torch.allclose(got[k], expected[k], atol=1e-5) for k in expected)
    assert torch.equal(extractor(x)["cls"], expected["cls"])  # and stays eager
    assert not list(graph_dir.glob("*.verdict.json"))  # the disagreeing graph is checked in full next time


def test_an_engine_that_cannot_be_built_falls_back_to_eager(backbone, tmp_path, monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(engines_module, "export_graph", broken)
    extractor = FeatureExtractor(backbone, engine="onnxruntime", graph_dir=tmp_path)
    with caplog.at_level(logging.WARNING):
        got = extractor(torch.randn(2, 3, 32, 32))
    assert extractor.choice.name == "eager" and "exporter exploded" in caplog.text
    assert got["cls"].shape == (2, backbone.embed_dim)


def test_the_engine_setting_is_checked(monkeypatch) -> None:
    monkeypatch.setenv("DINOTUNE_ENGINE", "tensorrt")
    with pytest.raises(ConfigError, match="DINOTUNE_ENGINE"):
        requested_engine()
    monkeypatch.setenv("DINOTUNE_ENGINE", "eager")
    assert requested_engine() == "eager" and requested_engine("onnxruntime") == "onnxruntime"


def test_the_check_computes_nothing_twice_and_a_recorded_verdict_shortens_it(backbone, tmp_path, monkeypatch) -> None:
    """First run: the candidate's outputs on the checked images are the features (each image runs once in
    it); the verdict is recorded beside the graph; a later run checks one image and trusts the record."""
    calls: list[int] = []
    real = engines_module.OnnxEngine.__call__

    def counting(self, x):
        calls.append(len(x))
        return real(self, x)

    monkeypatch.setattr(engines_module.OnnxEngine, "__call__", counting)
    x = torch.randn(12, 3, 32, 32)
    first = FeatureExtractor(backbone, engine="onnxruntime", graph_dir=tmp_path)
    got = first(x)
    assert first.choice.name == "onnxruntime" and calls == [1, CHECK_IMAGES, 12 - CHECK_IMAGES]  # warm-up, check, rest
    verdicts = list(tmp_path.glob("*.verdict.json"))
    assert len(verdicts) == 1 and json.loads(verdicts[0].read_text())["versions"]["onnxruntime"]
    expected = extract_features(backbone, x)
    assert all(float((got[k] - expected[k]).abs().max()) <= PARITY for k in expected)

    calls.clear()
    later = FeatureExtractor(backbone, engine="onnxruntime", graph_dir=tmp_path)
    later(x)
    assert later.choice.name == "onnxruntime" and calls == [1, 11]  # one image checked, no warm-up, no timing
    assert "when the graph was first checked" in later.choice.reason
    verdicts[0].write_text(json.dumps({"speedup": 2.0, "versions": {"onnxruntime": "0.0"}}))  # another runtime
    calls.clear()
    FeatureExtractor(backbone, engine="onnxruntime", graph_dir=tmp_path)(x)
    assert calls == [1, CHECK_IMAGES, 12 - CHECK_IMAGES]  # checked in full again


def test_graph_passes_fold_layer_scale_and_fuse_rotary_and_attention_without_changing_the_features(
    backbone, tmp_path
) -> None:
    import onnx

    from dinotune.features.graph_passes import fold_layer_scale, fuse_attention, fuse_rotary

    shape, kinds = (3, 32, 32), backbone.feature_kinds
    plain = engines_module.export_graph(backbone, kinds, shape, tmp_path / "plain.onnx", rewrite=False)
    model = onnx.load(str(plain))
    blocks = backbone.n_blocks
    ops = [n.op_type for n in model.graph.node]
    assert fold_layer_scale(model) == 2 * blocks and fuse_rotary(model) == 2 * blocks  # per block: 2 of each
    rewritten = [n.op_type for n in model.graph.node]
    assert rewritten.count("RotaryEmbedding") == 2 * blocks and "Neg" in ops and "Neg" not in rewritten
    assert len(rewritten) < len(ops) - 8 * blocks
    onnx.save(model, str(tmp_path / "rewritten.onnx"))
    assert fuse_attention(model) == blocks  # one per block: head split/merge, k^T, scale, softmax all gone
    fused = [n.op_type for n in model.graph.node]
    assert fused.count("MultiHeadAttention") == blocks and "Softmax" not in fused
    assert fused.count("RotaryEmbedding") == 2 * blocks and fused.count("Transpose") < rewritten.count("Transpose")
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "attention.onnx"))
    import onnxruntime as ort

    x = torch.randn(3, *shape)
    expected = extract_features(backbone, x)
    for path in (plain, tmp_path / "rewritten.onnx", tmp_path / "attention.onnx"):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(list(kinds), {engines_module.INPUT: x.numpy()})
        for kind, value in zip(kinds, got, strict=True):
            assert float((torch.from_numpy(value) - expected[kind]).abs().max()) <= PARITY


def test_graph_passes_leave_other_graphs_alone() -> None:
    """A Mul by a constant that does not follow MatMul + bias, or whose weights are shared, is not folded."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from dinotune.features.graph_passes import fold_layer_scale, fuse_attention, fuse_rotary

    w, b, gamma = (numpy_helper.from_array(np.full(s, v, np.float32), n) for n, s, v in
                   (("w", (4, 4), 0.5), ("b", (4,), 1.0), ("gamma", (4,), 2.0)))  # fmt: skip
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["a"]),
        helper.make_node("Mul", ["a", "gamma"], ["y"]),
        helper.make_node("Mul", ["x", "gamma"], ["z"]),  # no MatMul + bias before it
        helper.make_node("Add", ["a", "z"], ["s"]),  # `a` has a second consumer: folding would change it
        helper.make_node("MatMul", ["s", "w"], ["scores"]),  # a softmax of a product, not of head-split q and k
        helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "w"], ["out"]),
    ]
    io = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [2, 4]) for n in ("x", "y", "out")]
    model = helper.make_model(helper.make_graph(nodes, "g", [io[0]], io[1:], [w, b, gamma]))
    before = model.SerializeToString()
    assert fold_layer_scale(model) == 0 and fuse_rotary(model) == 0 and fuse_attention(model) == 0
    assert model.SerializeToString() == before
