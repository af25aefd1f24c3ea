"""Index of an ONNX graph shared by the graph rewrites (`graph_passes`, `attention_fusion`)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

MS_DOMAIN = "com.microsoft"


class _Graph:
    """Index of one ONNX graph: producers, consumer counts, initializers as arrays."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.model, self.graph = model, model.graph
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.uses = Counter(name for node in self.graph.node for name in node.input)
        self.uses.update(out.name for out in self.graph.output)
        self.init = {t.name: t for t in self.graph.initializer}
        self._array = numpy_helper.to_array
        self._fresh = 0

    def array(self, name: str) -> np.ndarray | None:
        return self._array(self.init[name]) if name in self.init else None

    def add_initializer(self, base: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self._fresh += 1
        name = f"{base}__dinotune{self._fresh}"
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def only_use(self, name: str, op: str) -> Any:
        """The node producing `name` when it is an `op` and `name` has no other consumer."""
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op and self.uses[name] == 1 else None
