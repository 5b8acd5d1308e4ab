"""An independent dense evaluator of diagrams for the rule tests: loops build the 0/1 constants, numpy contracts.

Nothing here calls tnderiv's planner or constants; it reads only the diagram's public fields
(nodes, legs, sizes, groups, views, pattern hyperparameters, folded sub-diagrams).
"""

from __future__ import annotations

import itertools
import string

import numpy as np
import sympy

from tnderiv.ir import Diagram, NodeKind, terms_of


def _int(size, bindings) -> int:
    value = sympy.sympify(size).xreplace({k: sympy.Integer(v) for k, v in bindings.items()})
    return int(value)


def pattern(k_size: int, o_size: int, i_size: int, stride: int, dilation: int, pad: int, mode: str) -> np.ndarray:
    """``Π[k, o, i]`` by a loop over (k, o), mapping out-of-range indices by the padding mode."""
    out = np.zeros((k_size, o_size, i_size))
    for k, o in itertools.product(range(k_size), range(o_size)):
        i = o * stride + k * dilation - pad
        if mode == "reflect":
            i = -i if i < 0 else (2 * (i_size - 1) - i if i >= i_size else i)
        elif mode == "replicate":
            i = min(max(i, 0), i_size - 1)
        elif mode == "circular":
            i %= i_size
        if 0 <= i < i_size:
            out[k, o, i] = 1.0
    return out


def node_array(node, sizes: dict[str, int], operands: dict[str, np.ndarray], bindings) -> np.ndarray:
    """The node on its legs (operands read through their groups and views)."""
    shape = [sizes[leg] for leg in node.legs]
    if node.kind is NodeKind.OPERAND:
        array = operands[node.name]
        out = np.zeros(shape)
        groups = node.axis_groups
        views = node.view or (None,) * len(groups)
        for index in itertools.product(*(range(s) for s in shape)):
            position, j = [], 0
            for group, view in zip(groups, views):
                part = index[j : j + len(group)]
                group_sizes = [sizes[leg] for leg in group]
                if view is None:
                    flat = int(np.ravel_multi_index(part, group_sizes)) if group else 0
                else:
                    flat = view.offset + sum(s * p for s, p in zip(view.strides, part))
                position.append(flat)
                j += len(group)
            out[index] = array[tuple(position)]
        return out
    if node.kind is NodeKind.PATTERN:
        p = node.pattern
        return pattern(*shape, p.stride, p.dilation, p.pad_left, p.mode.value)
    if node.kind is NodeKind.DELTA:
        out = np.zeros(shape)
        for j in range(shape[0]):
            out[(j,) * len(shape)] = 1.0
        return out
    if node.kind is NodeKind.ONES:
        return np.ones(shape)
    if node.kind is NodeKind.SCALAR:
        return np.array(node.value)
    if node.kind is NodeKind.FOLDED:
        inner = node.network
        return contract(inner, {}, bindings, layout=False)
    raise TypeError(node.kind)


def contract(expr, operands: dict[str, np.ndarray], bindings=None, layout: bool = True) -> np.ndarray:
    """``expr`` with numpy; ``layout=True``: the result in the user's layout (open axis groups)."""
    bindings = bindings or {}
    total = None
    for term in terms_of(expr):
        sizes = {leg: _int(s, bindings) for leg, s in term.sizes.items()}
        letters = dict(zip(term.sizes, string.ascii_letters))
        arrays = [node_array(n, sizes, operands, bindings) for n in term.nodes]
        equation = ",".join("".join(letters[leg] for leg in n.legs) for n in term.nodes) + "->" + "".join(letters[leg] for leg in term.open_legs)
        value = np.einsum(equation, *arrays) if arrays else np.array(1.0)
        value = value * float(sympy.sympify(term.coefficient).xreplace({k: sympy.Integer(v) for k, v in bindings.items()}))
        value = np.broadcast_to(value, [sizes[leg] for leg in term.open_legs])
        if layout:
            value = value.reshape([int(np.prod([sizes[leg] for leg in g])) for g in term.open_axis_groups])
        total = value if total is None else total + value
    return np.asarray(total)


def user_shapes(expr, bindings=None) -> dict[str, tuple[int, ...]]:
    """User-layout shape of each operand (products of leg sizes, or the view's axis size)."""
    bindings = bindings or {}
    shapes = {}
    for term in terms_of(expr):
        sizes = {leg: _int(s, bindings) for leg, s in term.sizes.items()}
        for node in term.nodes:
            if node.kind is NodeKind.OPERAND:
                views = node.view or (None,) * len(node.axis_groups)
                shapes[node.name] = tuple(
                    _int(v.size, bindings) if v is not None else int(np.prod([sizes[leg] for leg in g])) for g, v in zip(node.axis_groups, views)
                )
    return shapes


def assert_same_value(before: Diagram, after: Diagram, bindings=None, seed: int = 0) -> None:
    """Before and after contract to the same values on random operands."""
    shapes = user_shapes(before, bindings)
    assert user_shapes(after, bindings).items() <= shapes.items(), "the rewrite changed an operand's shape"
    rng = np.random.default_rng(seed)
    operands = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
    want = contract(before, operands, bindings)
    got = contract(after, operands, bindings)
    assert want.shape == got.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
