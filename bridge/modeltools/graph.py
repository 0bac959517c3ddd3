"""Reading ONNX graphs: decomposed-LayerNorm chains and parameter counts.

At opset 14 there is no LayerNormalization op: the LAM export writes every
LayerNorm as the 9-op chain

    x -> ReduceMean -> Sub(x, mean) -> Pow(., 2) -> ReduceMean -> Add(., eps) -> Sqrt
      -> Div(Sub, Sqrt) -> Mul(., gamma) -> Add(., beta)

(the Sub's output feeds both Pow and Div).  A naive fp16 conversion of these
chains subdues the output (seed model card), so the surgical converter keeps
exactly these nodes and their gamma/beta in fp32.  :func:`find_layernorm_chains`
finds them by walking producer/consumer edges, not by node names, so it works
on any export that writes this pattern.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

#: Op types of the chain, in chain order (the order of :attr:`LayerNormChain.nodes`).
CHAIN_OPS: tuple[str, ...] = (
    "ReduceMean", "Sub", "Pow", "ReduceMean", "Add", "Sqrt", "Div", "Mul", "Add",
)  # fmt: skip


def constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """A Constant node's value, whichever attribute holds it (None if not a plain float/tensor)."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.asarray(attr.f, np.float32)
        if attr.name == "value_floats":
            return np.asarray(list(attr.floats), np.float32)
    return None


@dataclass(frozen=True, slots=True)
class LayerNormChain:
    """One decomposed LayerNorm found in a graph."""

    nodes: tuple[str, ...]  #: the 9 node names, in :data:`CHAIN_OPS` order
    gamma: str  #: the Mul's constant operand: an initializer or a Constant node's output
    beta: str  #: the final Add's constant operand: an initializer or a Constant node's output
    input: str = ""  #: the tensor normalised (input of the first ReduceMean and the Sub)
    output: str = ""  #: the final Add's output
    epsilon: float = 0.0  #: the constant added to the variance


class _Index:
    """Producer / consumer / constant lookups over one graph's top level."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_outputs = {o.name for o in graph.output}

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is an initializer or a ``Constant`` node's output."""
        init = self.initializers.get(name)
        if init is not None:
            if init.data_location == onnx.TensorProto.EXTERNAL and not init.raw_data:
                return None  # weights not loaded: the value is unknown, but it is constant
            return numpy_helper.to_array(init)
        node = self.producer.get(name)
        if node is None or node.op_type != "Constant":
            return None
        return constant_value(node)

    def is_constant(self, name: str) -> bool:
        if name in self.initializers:
            return True
        node = self.producer.get(name)
        return node is not None and node.op_type == "Constant"

    def only_consumer(self, tensor: str, op_type: str) -> onnx.NodeProto | None:
        """The single node reading ``tensor`` if it is an ``op_type`` and ``tensor`` is internal."""
        if tensor in self.graph_outputs:
            return None
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or users[0].op_type != op_type:
            return None
        return users[0]

    def other_operand(self, node: onnx.NodeProto, tensor: str) -> str | None:
        """For a binary (commutative) op reading ``tensor``: its other input."""
        if len(node.input) != 2:
            return None
        a, b = node.input
        if a == tensor and b != tensor:
            return b
        if b == tensor and a != tensor:
            return a
        return None

    def reduce_axes(self, node: onnx.NodeProto) -> tuple[tuple[int, ...], int] | None:
        """``(axes, keepdims)`` of a ReduceMean; axes from the attribute or (opset 18) the input."""
        axes: tuple[int, ...] = ()
        keepdims = 1
        for attr in node.attribute:
            if attr.name == "axes":
                axes = tuple(attr.ints)
            elif attr.name == "keepdims":
                keepdims = attr.i
        if len(node.input) > 1 and node.input[1]:
            value = self.constant(node.input[1])
            if value is None:
                return None
            axes = tuple(int(a) for a in np.asarray(value).ravel())
        return axes, keepdims


def _is_scalar(value: np.ndarray | None, expected: float | None = None) -> bool:
    if value is None or value.size != 1:
        return False
    v = float(np.asarray(value).ravel()[0])
    return math.isfinite(v) and (expected is None or v == expected)


def _match(index: _Index, first: onnx.NodeProto) -> LayerNormChain | None:
    """The chain starting at ReduceMean ``first``, or None when the wiring differs anywhere."""
    if len(first.input) < 1 or len(first.output) != 1:
        return None
    x, mean = first.input[0], first.output[0]
    axes = index.reduce_axes(first)
    if axes is None or axes[1] != 1:
        return None

    sub = index.only_consumer(mean, "Sub")
    if sub is None or list(sub.input) != [x, mean]:
        return None
    centred = sub.output[0]
    if centred in index.graph_outputs:
        return None
    users = index.consumers.get(centred, [])
    pows = [n for n in users if n.op_type == "Pow"]
    divs = [n for n in users if n.op_type == "Div"]
    if len(users) != 2 or len(pows) != 1 or len(divs) != 1:
        return None
    pow_, div = pows[0], divs[0]
    if len(pow_.input) != 2 or pow_.input[0] != centred:
        return None
    if not _is_scalar(index.constant(pow_.input[1]), 2.0):
        return None
    if len(div.input) != 2 or div.input[0] != centred:
        return None

    second = index.only_consumer(pow_.output[0], "ReduceMean")
    if second is None or second.input[0] != pow_.output[0] or index.reduce_axes(second) != axes:
        return None
    add_eps = index.only_consumer(second.output[0], "Add")
    if add_eps is None:
        return None
    eps_name = index.other_operand(add_eps, second.output[0])
    eps = index.constant(eps_name) if eps_name else None
    if not _is_scalar(eps) or float(np.asarray(eps).ravel()[0]) < 0:
        return None
    sqrt = index.only_consumer(add_eps.output[0], "Sqrt")
    if sqrt is None:
        return None
    if index.only_consumer(sqrt.output[0], "Div") is not div or div.input[1] != sqrt.output[0]:
        return None

    mul = index.only_consumer(div.output[0], "Mul")
    if mul is None:
        return None
    gamma = index.other_operand(mul, div.output[0])
    if gamma is None or not index.is_constant(gamma):
        return None
    add_beta = index.only_consumer(mul.output[0], "Add")
    if add_beta is None:
        return None
    beta = index.other_operand(add_beta, mul.output[0])
    if beta is None or not index.is_constant(beta):
        return None

    chain = (first, sub, pow_, second, add_eps, sqrt, div, mul, add_beta)
    return LayerNormChain(
        nodes=tuple(n.name for n in chain),
        gamma=gamma,
        beta=beta,
        input=x,
        output=add_beta.output[0],
        epsilon=float(np.asarray(eps).ravel()[0]),
    )


def find_layernorm_chains(model: onnx.ModelProto) -> list[LayerNormChain]:
    """Every decomposed LayerNorm chain in ``model``'s main graph, in graph order.

    A chain matches only when the op types *and* the wiring are exactly the
    pattern above: the Sub reads ``(x, mean)``, the Pow's exponent is the
    constant 2, both ReduceMeans reduce the same axes with keepdims, the Div
    reads ``(Sub, Sqrt)``, eps/gamma/beta are constants (initializers or
    ``Constant`` nodes; either operand order for the commutative Add/Mul), and
    no intermediate tensor is read elsewhere or is a graph output -- so keeping
    the 9 nodes in fp32 never changes a value seen outside the chain.  Weights
    need not be loaded (gamma/beta are recognised as initializers by name), but
    the small eps/exponent constants must be readable.  Subgraphs (If/Loop
    bodies) are not searched.  Raises ``ValueError`` if a matched node has an
    empty or duplicated name, since callers identify nodes by name.
    """
    graph = model.graph
    index = _Index(graph)
    chains = []
    for node in graph.node:
        if node.op_type == "ReduceMean":
            chain = _match(index, node)
            if chain is not None:
                chains.append(chain)
    counts = Counter(n.name for n in graph.node)
    dupes = {name for name, k in counts.items() if k > 1}
    for chain in chains:
        bad = [n for n in chain.nodes if not n or n in dupes]
        if bad:
            raise ValueError(
                f"LayerNorm chain at {chain.input!r} has unnamed or duplicated node names "
                f"{bad}; give every node a unique name first"
            )
    return chains


def count_parameters(model: onnx.ModelProto) -> int:
    """Elements in the main graph's initializers, from their dims (weights need not be loaded)."""
    graph = model.graph
    total = sum(math.prod(t.dims) for t in graph.initializer)
    total += sum(math.prod(s.dims) for s in graph.sparse_initializer)
    return int(total)
