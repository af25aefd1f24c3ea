"""Rewrites of the exported features graph that ONNX Runtime's own optimiser does not make (DINOv3 ViTs).

Each pass matches a pattern on the ONNX graph only (no knowledge of the backbone classes), leaves the
graph unchanged where the pattern is absent (ConvNeXt, other ViTs), and computes the same function up to
fp32 rounding; the engine's parity check against eager still decides whether the graph is used.

- `fold_layer_scale`: `MatMul(x, W) + b` followed by `* gamma` (DINOv3's LayerScale after the attention
  output and the MLP) becomes `MatMul(x, W * gamma) + b * gamma`: one pass over the activations less per
  branch, and ORT can then fuse the residual add into SkipLayerNormalization.
- `fuse_rotary`: the rotary embedding written out as `x * cos + cat(-x2, x1) * sin` (two slices, a
  negation, a concatenation, two products and a sum over q and k of every block; ~7% of the run time)
  becomes one `com.microsoft.RotaryEmbedding` node (non-interleaved, positions 0..P-1, half-width tables).
- `fuse_attention` (`dinotune.features.attention_fusion`): each block's attention with its head
  split/merge transposes becomes one `com.microsoft.MultiHeadAttention` node on (B, S, width) tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dinotune.features.attention_fusion import fuse_attention
from dinotune.features.onnx_graph import MS_DOMAIN, _Graph


def fold_layer_scale(model: Any) -> int:
    """Fold `* gamma` after `MatMul + bias` into the weights and bias; returns how many were folded."""
    g, folded, drop = _Graph(model), 0, []
    for mul in list(g.graph.node):
        if mul.op_type != "Mul":
            continue
        gamma_name = next((i for i in mul.input if i in g.init), None)
        other = next((i for i in mul.input if i != gamma_name), None)
        add = g.only_use(other, "Add") if gamma_name and other else None
        if add is None:
            continue
        bias_name = next((i for i in add.input if i in g.init), None)
        matmul = g.only_use(next((i for i in add.input if i != bias_name), ""), "MatMul")
        weight = g.array(matmul.input[1]) if matmul is not None and bias_name else None
        gamma, bias = g.array(gamma_name), g.array(bias_name) if bias_name else None
        if weight is None or weight.ndim != 2 or gamma.shape != (weight.shape[1],) or bias.shape != gamma.shape:
            continue
        matmul.input[1] = g.add_initializer(matmul.input[1], (weight * gamma).astype(weight.dtype))
        add.input[list(add.input).index(bias_name)] = g.add_initializer(bias_name, (bias * gamma).astype(bias.dtype))
        add.output[0] = mul.output[0]
        drop.append(mul)
        folded += 1
    for node in drop:
        g.graph.node.remove(node)
    return folded


def _rotary_match(g: _Graph, add: Any) -> tuple[str, str, str, list[Any]] | None:
    """(x, cos, sin, nodes) when `add` is `x * cos + cat(-x[..., h:], x[..., :h]) * sin`."""
    products = [g.only_use(i, "Mul") for i in add.input]
    if len(products) != 2 or None in products:
        return None
    for direct, rotated in (products, products[::-1]):
        concat = next((g.only_use(i, "Concat") for i in rotated.input if g.only_use(i, "Concat")), None)
        if concat is None or len(concat.input) != 2:
            continue
        neg = g.only_use(concat.input[0], "Neg")
        high = g.only_use(neg.input[0], "Slice") if neg is not None else None
        low = g.only_use(concat.input[1], "Slice")
        if high is None or low is None or high.input[0] != low.input[0]:
            continue
        x = high.input[0]
        if x not in direct.input:
            continue
        cos = next(i for i in direct.input if i != x)
        sin = next(i for i in rotated.input if i != concat.output[0])
        return x, cos, sin, [direct, rotated, concat, neg, high, low, add]
    return None


def fuse_rotary(model: Any) -> int:
    """Replace written-out rotary embeddings on (B, heads, P, head_dim) tensors by RotaryEmbedding nodes."""
    from onnx import helper

    g, fused, tables = _Graph(model), 0, {}
    for add in [n for n in g.graph.node if n.op_type == "Add"]:
        match = _rotary_match(g, add)
        if match is None:
            continue
        x, cos, sin, nodes = match
        output, prefix, count = add.output[0], _prefix_split(g, x, add.output[0], nodes), 0
        if prefix is not None:  # rotate every token, the prefix ones by angle 0: no split, no concat
            split, concat, count = prefix
            x, output, nodes = split.input[0], concat.output[0], [split, *nodes, concat]
        key = (cos, sin, count)
        if key not in tables:
            tables[key] = _half_tables(g, *key)
        index = list(g.graph.node).index(nodes[-1]) - len(nodes) + 1
        for node in nodes:
            g.graph.node.remove(node)
        rotary = helper.make_node("RotaryEmbedding", [x, *tables[key]], [output], domain=MS_DOMAIN, interleaved=0)
        g.graph.node.insert(index, rotary)
        fused += 1
    if fused and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return fused


def _prefix_split(g: _Graph, x: str, rotated: str, pattern: list[Any]) -> tuple[Any, Any, int] | None:
    """(split, concat, prefix tokens) when `x` is the patch part of `split(t, [prefix, P], axis=2)` and the
    rotated patches are concatenated back after the untouched prefix (DINOv3's class and register tokens)."""
    split = g.producer.get(x)
    if split is None or split.op_type != "Split" or len(split.output) != 2 or split.output[1] != x:
        return None
    sizes = g.array(split.input[1]) if len(split.input) > 1 else None
    axis = next((a.i for a in split.attribute if a.name == "axis"), 0)
    consumers = [n for n in g.graph.node if rotated in n.input]
    concat = consumers[0] if len(consumers) == 1 and consumers[0].op_type == "Concat" else None
    if sizes is None or sizes.shape != (2,) or axis not in (2, -2) or concat is None:
        return None
    if g.uses[x] != sum(list(n.input).count(x) for n in pattern):  # x feeds the rotary pattern only
        return None
    concat_axis = next((a.i for a in concat.attribute if a.name == "axis"), 0)
    if list(concat.input) != [split.output[0], rotated] or concat_axis not in (2, -2) or g.uses[split.output[0]] != 1:
        return None
    return split, concat, int(sizes[0])


def _half_tables(g: _Graph, cos: str, sin: str, prefix: int) -> tuple[str, str, str]:
    """Position offset 0 and nodes turning the (P, D) cos/sin tables into ORT's (prefix + P, D/2) caches,
    the `prefix` leading rows being angle 0 (cos 1, sin 0)."""
    from onnx import helper

    zero = g.add_initializer("rotary_position_offset", np.zeros(1, dtype=np.int64))
    pads = g.add_initializer("rotary_prefix_pads", np.array([prefix, 0, 0, 0], dtype=np.int64))
    names = []
    for table, fill in ((cos, 1.0), (sin, 0.0)):
        value = g.add_initializer(f"rotary_prefix_{fill:.0f}", np.array(fill, dtype=np.float32))
        half = helper.make_node("Split", [table], [f"{table}_half", f"{table}_rest"], axis=-1, num_outputs=2)
        padded = helper.make_node("Pad", [half.output[0], pads, value], [f"{table}_half_p{prefix}"])
        position = list(g.graph.node).index(g.producer[table]) + 1 if table in g.producer else 0
        g.graph.node.insert(position, padded)
        g.graph.node.insert(position, half)
        names.append(padded.output[0])
    return zero, names[0], names[1]


def optimize_graph(path: Path) -> dict[str, int]:
    """Apply every pass to the ONNX file at `path` in place; returns how often each matched."""
    import onnx

    model = onnx.load(str(path))
    counts = {"layer_scale_folded": fold_layer_scale(model), "rotary_fused": fuse_rotary(model)}
    counts["attention_fused"] = fuse_attention(model)  # after fuse_rotary: it moves the rotary nodes
    if any(counts.values()):
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    return counts
