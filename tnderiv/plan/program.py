"""One term lowered to a network of tensors, a contraction order simulated step by step, and the kernels that run it.

``Network`` is a concrete diagram (integer sizes) without its broadcast-only ``ones`` nodes;
``simulate`` replays an opt_einsum-style path on it; ``step_cost`` prices a step by the kernel that
would run it (cheap, for ranking candidate orders); ``Program`` builds those kernels and runs them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tnderiv.ir import Diagram, Node, NodeKind
from tnderiv.plan import gathers
from tnderiv.plan.backends import backend_named
from tnderiv.plan.constants import device_cached
from tnderiv.plan.conv import ConvKernel, conv_cost, match_conv
from tnderiv.plan.cost import StepCost
from tnderiv.plan.gathers import GatherKernel, gather_cost, match_gather
from tnderiv.plan.kernels import (
    EinsumKernel,
    HadamardKernel,
    Kernel,
    MatmulKernel,
    SparseKernel,
    StepInput,
    dense_flops,
    einsum_kind,
    hadamard_applies,
    hadamard_cost,
    matmul_applies,
    matmul_copies,
    natural_order,
)
from tnderiv.plan.layout import LegLayout, leg_array, leg_layout

SPARSE_KINDS = (NodeKind.PATTERN, NodeKind.DELTA)


@dataclass(frozen=True)
class Network:
    """The tensors one term contracts (broadcast ``ones`` left out), their leg sizes and the output legs."""

    nodes: tuple[Node, ...]
    sizes: Mapping[str, int]
    out_legs: tuple[str, ...]
    broadcast: tuple[str, ...]
    open_legs: tuple[str, ...]

    @staticmethod
    def of(term: Diagram) -> Network:
        sizes = {leg: int(size) for leg, size in term.sizes.items()}
        broadcast = _broadcast_legs(term)
        nodes = tuple(n for n in term.nodes if not (n.kind is NodeKind.ONES and set(n.legs) <= set(broadcast)))
        out_legs = tuple(leg for leg in term.open_legs if leg not in broadcast)
        return Network(nodes, sizes, out_legs, broadcast, term.open_legs)

    def inputs(self) -> list[StepInput]:
        return [StepInput(n.legs, n.is_constant, n if n.is_constant else None) for n in self.nodes]


def _broadcast_legs(term: Diagram) -> tuple[str, ...]:
    """Open legs carried only by ones nodes: added by broadcasting, not by the contraction."""
    if all(node.kind is NodeKind.ONES for node in term.nodes):
        return tuple(leg for leg in term.open_legs)
    counts = term.leg_count
    legs = []
    for node in term.nodes:
        if node.kind is NodeKind.ONES and all(counts[leg] == 1 and leg in term.open_legs for leg in node.legs):
            legs.extend(node.legs)
    return tuple(legs)


@dataclass(frozen=True)
class Contraction:
    """One step of a path: the tensors (by id) it consumes and the legs of what it produces."""

    ids: tuple[int, ...]
    out_id: int
    out_legs: tuple[str, ...]
    final: bool


def simulate(legs: Sequence[tuple[str, ...]], out_legs: Sequence[str], path: Sequence[Sequence[int]]) -> list[Contraction]:
    """Replay ``path`` (opt_einsum convention: positions popped in descending order, result appended)."""
    current = list(range(len(legs)))
    leg_of = {j: tuple(legs[j]) for j in current}
    steps = []
    out_set = set(out_legs)
    for number, positions in enumerate(path):
        ids = tuple(current.pop(p) for p in sorted(positions, reverse=True))
        final = number == len(path) - 1
        remaining = {leg for j in current for leg in leg_of[j]} | out_set
        produced = tuple(out_legs) if final else tuple(dict.fromkeys(leg for j in ids for leg in leg_of[j] if leg in remaining))
        new = len(leg_of)
        leg_of[new] = produced
        current.append(new)
        steps.append(Contraction(ids, new, produced, final))
    return steps


def _const_kind(t: StepInput) -> NodeKind | None:
    return t.node.kind if t.node is not None else None


@dataclass(frozen=True)
class StepMatch:
    """Which kernel runs a step, decided once for both ranking (``step_cost``) and building (``build_kernel``).

    ``kind``: ``"folded"`` (constants only), ``"conv"``, ``"gather"`` (fused gathers), ``"sparse"`` (one data
    input and one copy tensor or pattern), ``"hadamard"`` (multiply and sum), ``"matmul"`` (torch.matmul on
    views) or ``"einsum"``; ``detail``
    what the match found (the convolution or gather match, the ``(data, constant)`` pair)."""

    kind: str
    detail: Any = None


def match_step(inputs: Sequence[StepInput], out_legs: Sequence[str], sizes: Mapping[str, int], backend: str) -> StepMatch:
    """The kernel kind that runs this step on ``backend``."""
    if all(t.constant for t in inputs):
        return StepMatch("folded")
    out = set(out_legs)
    if backend_named(backend).is_torch:
        match = match_conv(inputs, out, sizes)
        if match is not None:
            return StepMatch("conv", match)
        gather = match_gather(inputs, out, sizes) if gathers.FUSED_GATHERS else None
        if gather is not None:
            return StepMatch("gather", gather)
        sparse = _sparse_pair(inputs)
        if sparse is not None:
            return StepMatch("sparse", sparse)
        if len(inputs) == 2 and hadamard_applies(inputs[0], inputs[1], out):
            return StepMatch("hadamard")
        if len(inputs) == 2 and matmul_applies(inputs[0], inputs[1], out):
            return StepMatch("matmul")
    return StepMatch("einsum")


def step_cost(inputs: Sequence[StepInput], out_legs: Sequence[str], sizes: Mapping[str, int], backend: str) -> StepCost:
    """The cost of a step under the structure-aware model, by the kernel that would run it (``match_step``)."""
    size = math.prod(sizes[leg] for leg in out_legs)
    dense = dense_flops(inputs, out_legs, sizes)
    match = match_step(inputs, out_legs, sizes, backend)
    if match.kind == "folded":
        return StepCost("folded", dense, 0, 0, size)
    if match.kind == "conv":
        return conv_cost(match.detail, inputs, sizes, dense, size)
    if match.kind == "gather":
        return gather_cost(match.detail, inputs, out_legs, sizes)
    if match.kind == "sparse":
        data, const = match.detail
        data_size = math.prod(sizes[leg] for leg in data.legs)
        kind = _sparse_kind(data, const, set(out_legs))
        if kind == "scatter":
            return StepCost(kind, dense, data_size, data_size + 2 * size, size)
        return StepCost(kind, dense, 0, data_size + size, size)
    if match.kind == "hadamard":
        return hadamard_cost(inputs[0], inputs[1], out_legs, sizes)
    kind = einsum_kind([t.legs for t in inputs], out_legs)
    moved = 0 if kind == "transpose" else sum(math.prod(sizes[leg] for leg in t.legs) for t in inputs) + size
    if match.kind == "matmul":
        return StepCost(kind, dense, dense, moved + matmul_copies(inputs[0], inputs[1], set(out_legs), sizes), size)
    return StepCost(kind, dense, dense, moved, size)


def _sparse_pair(inputs: Sequence[StepInput]) -> tuple[StepInput, StepInput] | None:
    if len(inputs) != 2:
        return None
    a, b = inputs
    if not a.constant and _const_kind(b) in SPARSE_KINDS:
        return a, b
    if not b.constant and _const_kind(a) in SPARSE_KINDS:
        return b, a
    return None


def _sparse_kind(data: StepInput, const: StepInput, out: set[str]) -> str:
    """Gather if every output position gets at most one input element (decided from the legs), else scatter."""
    node = const.node
    assert node is not None
    if node.kind is NodeKind.DELTA:
        return "relabel" if set(node.legs) & out else "scatter"
    kept = {leg for leg in node.legs if leg in out}
    k, o, i = node.legs
    if {k, o} <= kept:
        return "gather"
    if node.pattern is not None and node.pattern.mode.value == "zeros" and ({k, i} <= kept or {o, i} <= kept):
        return "gather"
    return "scatter"


def build_kernel(inputs: Sequence[StepInput], out_legs: Sequence[str], final: bool, sizes: Mapping[str, int], backend: str, like: Any) -> Kernel:
    """The kernel that runs a step (``match_step``; constant-only steps get an einsum that runs once, at build time)."""
    match = match_step(inputs, out_legs, sizes, backend)
    if match.kind == "conv":
        return ConvKernel(match.detail, inputs, sizes, like)
    if match.kind == "gather":
        return GatherKernel(match.detail, inputs, out_legs, final, sizes, like)
    if match.kind == "sparse":
        data, const = match.detail
        return SparseKernel(data, const, set(out_legs), sizes, like, data_index=next(j for j, t in enumerate(inputs) if t is data))
    if match.kind == "hadamard":
        return HadamardKernel(inputs[0], inputs[1], set(out_legs), sizes)
    if match.kind == "matmul":
        return MatmulKernel(inputs[0], inputs[1], set(out_legs), sizes)
    order = tuple(out_legs) if final else natural_order([t.legs for t in inputs], set(out_legs))
    kernel = EinsumKernel(inputs, order, sizes, backend)
    if match.kind == "folded":
        kernel.kind = "folded"
        kernel.cost = StepCost("folded", kernel.cost.flops_dense, 0, 0, kernel.cost.size)
    return kernel


@dataclass
class Instruction:
    """Run ``kernel`` on the values in ``inputs`` (slots), store in ``output``; free the slots in ``release``."""

    kernel: Kernel
    inputs: tuple[int, ...]
    output: int
    release: tuple[int, ...]


class Program:
    """A term's kernels in order, with its constants evaluated (and constant-only steps folded) on the device."""

    def __init__(self, network: Network, path: Sequence[Sequence[int]], backend: str, like: Any, constant_value: Any) -> None:
        self.network = network
        self._direct: tuple[tuple[str | None, LegLayout | None], ...] | None = None
        self.backend = backend
        self._is_torch = backend_named(backend).is_torch
        self.path = [tuple(p) for p in path]
        inputs = network.inputs()
        contractions = simulate([t.legs for t in inputs], network.out_legs, self.path)
        self.contractions = contractions
        legs_of: dict[int, tuple[str, ...]] = {j: t.legs for j, t in enumerate(inputs)}
        constant: dict[int, bool] = {j: t.constant for j, t in enumerate(inputs)}
        values: dict[int, Any] = {}
        self.operands: list[tuple[int, str, LegLayout]] = []
        for j, node in enumerate(network.nodes):
            if not node.is_constant:
                self.operands.append((j, node.name, leg_layout(node, network.sizes)))
        self.steps: list[Instruction] = []
        self.kernels: list[Kernel] = []
        place = (backend, str(getattr(like, "device", "")), str(getattr(like, "dtype", "")))
        keys: dict[int, Any] = {
            j: ("node", node, tuple(network.sizes[leg] for leg in node.legs)) for j, node in enumerate(network.nodes) if node.is_constant
        }
        last_use: dict[int, int] = {}
        for number, c in enumerate(contractions):
            for j in c.ids:
                last_use[j] = number
        for number, c in enumerate(contractions):
            step_inputs = [StepInput(legs_of[j], constant[j], network.nodes[j] if j < len(inputs) and constant[j] else None) for j in c.ids]
            kernel = build_kernel(step_inputs, c.out_legs, c.final, network.sizes, backend, like)
            if isinstance(kernel, EinsumKernel):  # the only kernel that reads constants as arrays
                for j in c.ids:
                    if constant[j] and j not in values:
                        values[j] = constant_value(network.nodes[j], network.sizes)
            legs_of[c.out_id] = kernel.out_legs
            constant[c.out_id] = all(constant[j] for j in c.ids)
            self.kernels.append(kernel)
            if constant[c.out_id]:
                # folded once per shape, kept on the device and shared by every plan that folds the same step
                keys[c.out_id] = ("fold", getattr(kernel, "equation", kernel.kind), tuple(keys[j] for j in c.ids), place)
                values[c.out_id] = device_cached(keys[c.out_id], lambda c=c, kernel=kernel: kernel(*(values[j] for j in c.ids)))
                continue
            release = tuple(j for j in c.ids if last_use[j] == number and j >= len(inputs))
            self.steps.append(Instruction(kernel, c.ids, c.out_id, release))
        self.result = contractions[-1].out_id if contractions else 0
        self.result_legs = legs_of[self.result] if (contractions or inputs) else ()
        if not contractions and inputs and constant[0] and 0 not in values:
            values[0] = constant_value(network.nodes[0], network.sizes)
        self.slots = max(legs_of) + 1 if legs_of else 1
        self.initial = [values.get(j) for j in range(self.slots)]
        final_order = network.out_legs
        self.permutation = None if self.result_legs == final_order else tuple(self.result_legs.index(leg) for leg in final_order)
        self.fresh = bool(self.steps) and self.steps[-1].output == self.result and self.steps[-1].kernel.fresh

    def run_with_bias(self, operands: Mapping[str, Any], bias: Any) -> Any:
        """A one-step convolution program with a bias added by the convolution itself; the kernel's natural layout."""
        if self._direct is None:
            by_slot = {slot: (name, layout) for slot, name, layout in self.operands}
            self._direct = tuple(by_slot.get(j, (None, None)) for j in self.steps[0].inputs)
        args = [None if name is None else (operands[name] if layout.identity else leg_array(operands[name], layout)) for name, layout in self._direct]
        return self.steps[0].kernel(*args, bias=bias, natural=True)  # type: ignore[call-arg]

    def __call__(self, operands: Mapping[str, Any]) -> Any:
        """The term's value on its output legs (without broadcast legs and coefficient)."""
        values = list(self.initial)
        for slot, name, layout in self.operands:
            values[slot] = leg_array(operands[name], layout)
        for step in self.steps:
            values[step.output] = step.kernel(*(values[j] for j in step.inputs))
            for j in step.release:
                values[j] = None
        result = values[self.result]
        if self.permutation is not None:
            result = result.permute(self.permutation) if self._is_torch else result.transpose(self.permutation)
        return result
