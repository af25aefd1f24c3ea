"""Fuse the exported scaled-dot-product attention of a ViT block into one `com.microsoft.MultiHeadAttention`.

The export writes each block's attention on (B, heads, S, head_dim) tensors: three Reshape + Transpose
pairs for q, k and v, a Reshape/Transpose/Reshape chain for k^T, two scale products, MatMul, Softmax,
MatMul and a Reshape/Transpose/Reshape back to (B, S, width). ONNX Runtime's CPU MultiHeadAttention
kernel takes q, k, v as (B, S, width) and returns (B, S, width), so every transpose and reshape goes away;
a rotary embedding between the head split and the product (DINOv3, fused by `graph_passes.fuse_rotary`)
is moved onto the (B, S, width) tensors, which ORT's RotaryEmbedding accepts with `num_heads`.
Pattern-only like the other passes; the engine's parity check against eager still decides.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dinotune.features.onnx_graph import MS_DOMAIN, _Graph


def _attribute(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _split_heads(g: _Graph, name: str) -> tuple[str, int, int, list[Any]] | None:
    """(x, heads, head_dim, nodes) when `name` is `x.reshape(B, S, heads, head_dim).transpose(1, 2)`."""
    transpose = g.only_use(name, "Transpose")
    if transpose is None or list(_attribute(transpose, "perm", [])) != [0, 2, 1, 3]:
        return None
    reshape = g.only_use(transpose.input[0], "Reshape")
    shape = g.array(reshape.input[1]) if reshape is not None else None
    if shape is None or shape.shape != (4,) or min(shape[1:]) <= 0:
        return None
    return reshape.input[0], int(shape[2]), int(shape[3]), [transpose, reshape]


def _projected(g: _Graph, name: str) -> tuple[str, Any, int, int, list[Any]] | None:
    """(x, rotary node or None, heads, head_dim, nodes) for a head-split input, maybe rotated after the split."""
    rotary = g.producer.get(name)
    if rotary is not None and rotary.op_type == "RotaryEmbedding" and rotary.domain == MS_DOMAIN:
        split = _split_heads(g, rotary.input[0]) if _attribute(rotary, "interleaved", 0) == 0 else None
        return (split[0], rotary, split[1], split[2], [rotary, *split[3]]) if split else None
    split = _split_heads(g, name)
    return (split[0], None, split[1], split[2], split[3]) if split else None


def _key_transposed(g: _Graph, name: str) -> str | None:
    """The (B, heads, S, head_dim) key when `name` is its Reshape -> Transpose(0, 2, 1) -> Reshape transposition."""
    outer = g.only_use(name, "Reshape")
    transpose = g.only_use(outer.input[0], "Transpose") if outer is not None else None
    if transpose is None or list(_attribute(transpose, "perm", [])) != [0, 2, 1]:
        return None
    inner = g.only_use(transpose.input[0], "Reshape")
    return inner.input[0] if inner is not None else None


def _scaled(g: _Graph, name: str) -> tuple[str, float] | None:
    """(x, s) when `name` is `x * s` with a scalar initializer s."""
    mul = g.only_use(name, "Mul")
    factor = next((i for i in mul.input if i in g.init), None) if mul is not None else None
    value = g.array(factor) if factor else None
    if value is None or value.size != 1:
        return None
    return next(i for i in mul.input if i != factor), float(value.reshape(()))


def _merged_heads(g: _Graph, name: str, heads: int, head_dim: int) -> str | None:
    """The (B, S, width) output when `name` (B, heads, S, head_dim) is merged back by Reshape/Transpose/Reshape."""
    consumers = [n for n in g.graph.node if name in n.input]
    first = consumers[0] if len(consumers) == 1 and consumers[0].op_type == "Reshape" else None
    shape = g.array(first.input[1]) if first is not None else None
    if shape is None or shape.shape != (4,) or [int(shape[1]), int(shape[3])] != [heads, head_dim]:
        return None
    nodes = [n for n in g.graph.node if first.output[0] in n.input]
    transpose = nodes[0] if len(nodes) == 1 and nodes[0].op_type == "Transpose" else None
    if transpose is None or list(_attribute(transpose, "perm", [])) != [0, 2, 1, 3]:
        return None
    nodes = [n for n in g.graph.node if transpose.output[0] in n.input]
    last = nodes[0] if len(nodes) == 1 and nodes[0].op_type == "Reshape" else None
    out_shape = g.array(last.input[1]) if last is not None else None
    if out_shape is None or out_shape.shape != (3,) or int(out_shape[2]) != heads * head_dim:
        return None
    return last.output[0]


def _attention_match(g: _Graph, softmax: Any) -> dict[str, Any] | None:
    """The pieces of one `softmax(q*s1 @ (k^T*s2)) @ v` attention on head-split tensors, or None."""
    scores = g.only_use(softmax.input[0], "MatMul")
    if scores is None or _attribute(softmax, "axis", -1) not in (-1, 3):
        return None
    query, key_t = (_scaled(g, i) for i in scores.input)
    key = _key_transposed(g, key_t[0]) if query and key_t else None
    if key is None:
        return None
    product = [n for n in g.graph.node if softmax.output[0] in n.input]
    if len(product) != 1 or product[0].op_type != "MatMul" or product[0].input[0] != softmax.output[0]:
        return None
    q, k, v = _projected(g, query[0]), _projected(g, key), _projected(g, product[0].input[1])
    if q is None or k is None or v is None or v[1] is not None or len({(p[2], p[3]) for p in (q, k, v)}) != 1:
        return None
    output = _merged_heads(g, product[0].output[0], q[2], q[3])
    if output is None:
        return None
    return {"q": q, "k": k, "v": v, "scale": query[1] * key_t[1], "output": output}


def _rotated_3d(g: _Graph, projected: tuple[str, Any, int, int, list[Any]], base: str) -> tuple[str, list[Any]]:
    """The (B, S, width) input, rotated on (B, S, width) when it was rotated after the head split."""
    from onnx import helper

    x, rotary, heads = projected[0], projected[1], projected[2]
    if rotary is None:
        return x, []
    node = helper.make_node(
        "RotaryEmbedding", [x, *rotary.input[1:]], [f"{base}_rot3d"], domain=MS_DOMAIN, interleaved=0, num_heads=heads
    )
    return node.output[0], [node]


def fuse_attention(model: Any) -> int:
    """Replace head-split scaled-dot-product attentions by MultiHeadAttention nodes; returns how many."""
    from onnx import helper

    g, fused = _Graph(model), 0
    for softmax in [n for n in g.graph.node if n.op_type == "Softmax"]:
        match = _attention_match(g, softmax)
        if match is None:
            continue
        output, heads = match["output"], match["q"][2]
        query, new_q = _rotated_3d(g, match["q"], f"{output}_q")
        key, new_k = _rotated_3d(g, match["k"], f"{output}_k")
        attention = helper.make_node(
            "MultiHeadAttention",
            [query, key, match["v"][0]],
            [output],
            domain=MS_DOMAIN,
            num_heads=heads,
            scale=float(np.float32(match["scale"])),
        )
        producer = g.producer[output]
        index = list(g.graph.node).index(producer)
        for offset, node in enumerate([*new_q, *new_k, attention]):
            g.graph.node.insert(index + 1 + offset, node)
        producer.output[0] = f"{output}__unfused"
        fused += 1
    if fused:
        _drop_dead(g.model.graph)
        if not any(o.domain == MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return fused


def _drop_dead(graph: Any) -> None:
    """Remove nodes none of whose outputs is used (the unfused attention chains)."""
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)
