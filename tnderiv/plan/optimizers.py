"""The ``optimize=`` argument: a name, an explicit path, or an opt_einsum/cotengra optimizer object."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from numbers import Integral
from typing import Any

import opt_einsum as oe
from opt_einsum.paths import _PATH_OPTIONS, PathOptimizer

from tnderiv.ir import NodeKind
from tnderiv.plan import gathers
from tnderiv.plan.backends import backend_named
from tnderiv.plan.conv import match_conv
from tnderiv.plan.cost import StepCost, total_time
from tnderiv.plan.kernels import StepInput

# exact dynamic programming is affordable for layer-sized networks
EXACT_UP_TO = 12
NAMES = ("auto", *sorted(set(_PATH_OPTIONS) - {"auto"}))


def resolve(optimize: Any, num_operands: int) -> Any:
    """What ``opt_einsum.contract_path`` takes for ``optimize``; raises listing the valid names."""
    if isinstance(optimize, str):
        if optimize == "auto":
            return "dp" if num_operands <= EXACT_UP_TO else "auto-hq"
        if optimize == "cotengra":
            try:
                import cotengra  # type: ignore[import-not-found]
            except ImportError:
                raise ValueError("optimize='cotengra' needs cotengra: pip install cotengra") from None
            return cotengra.HyperOptimizer(max_repeats=16, progbar=False)
        if optimize not in _PATH_OPTIONS:
            raise ValueError(f"path optimizer {optimize!r} not found; valid options are {[*NAMES, 'cotengra']}")
        return optimize
    if isinstance(optimize, Sequence):
        return check_path(optimize, num_operands)
    if isinstance(optimize, PathOptimizer) or callable(optimize):
        return optimize
    raise TypeError(
        f"optimize={optimize!r}: expected a name in {list(NAMES)}, an explicit path (list of index tuples) or an optimizer object"
    )


def check_path(path: Sequence[Any], num_operands: int) -> list[tuple[int, ...]]:
    """``path`` as a list of index tuples, after checking that it contracts ``num_operands`` tensors into one.

    opt_einsum's convention: each step names positions in the current list of tensors (the result of a
    step is appended at the end); raises naming the step and what is wrong with it.
    """
    shown = f"optimize={list(path)!r}"
    steps: list[tuple[int, ...]] = []
    remaining = num_operands
    for number, step in enumerate(path):
        if isinstance(step, (str, bytes)) or not isinstance(step, Sequence) or not step:
            raise ValueError(f"{shown}: step {number} is {step!r}; expected a non-empty tuple of tensor positions, e.g. (0, 1)")
        if not all(isinstance(i, Integral) and not isinstance(i, bool) for i in step):
            raise ValueError(f"{shown}: step {number} is {step!r}; expected int positions")
        if len(set(int(i) for i in step)) != len(step):
            raise ValueError(f"{shown}: step {number} {tuple(step)} repeats a position")
        bad = [i for i in step if not 0 <= i < remaining]
        if bad:
            raise ValueError(
                f"{shown}: step {number} {tuple(step)} names position {bad[0]}, but only {remaining} tensors are left at "
                f"that step (positions 0..{remaining - 1}; each step's result is appended at the end)"
            )
        remaining -= len(step) - 1
        steps.append(tuple(int(i) for i in step))
    if num_operands > 1 and remaining != 1:
        raise ValueError(
            f"{shown}: this term has {num_operands} tensors and {remaining} are left after the path; an explicit path "
            f"must contract them into one ({num_operands - 1} pairwise steps)"
        )
    return steps


def cache_key(optimize: Any) -> Hashable:
    """A hashable stand-in for ``optimize`` (objects by identity)."""
    if isinstance(optimize, str):
        return optimize
    if isinstance(optimize, Sequence):
        try:  # a malformed path gets its key as given; check_path reports what is wrong with it
            return ("path", tuple(tuple(step) for step in optimize))
        except TypeError:
            return ("path", repr(optimize))
    return ("object", id(optimize))




# ----- candidate orders for optimize="auto" ---------------------------------------------------------
# opt_einsum's "write" and "combo" objectives added no better order on 205 of 206 plans of the real layers
# (one scored 0.6 % worse without them) and cost 8 % of a cold call: the structure-aware score ranks anyway
DP_OBJECTIVES = ("flops", "size")


@dataclass(frozen=True)
class Candidate:
    """A contraction order and its cost under both models (``time``: the structure-aware score it is ranked by)."""

    name: str
    path: tuple[tuple[int, ...], ...]
    flops_dense: int
    flops: int
    moved: int
    peak_size: int
    time: float
    chosen: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": [list(p) for p in self.path],
            "flops_dense": self.flops_dense,
            "flops": self.flops,
            "moved": self.moved,
            "peak_size": self.peak_size,
            "score": self.time,
            "chosen": self.chosen,
        }


def _equation(legs: Sequence[Sequence[str]], out_legs: Sequence[str]) -> str:
    symbol = {leg: oe.get_symbol(j) for j, leg in enumerate(dict.fromkeys([x for ls in legs for x in ls] + list(out_legs)))}
    return ",".join("".join(symbol[x] for x in ls) for ls in legs) + "->" + "".join(symbol[x] for x in out_legs)


def opt_einsum_path(legs: Sequence[Sequence[str]], out_legs: Sequence[str], sizes: Mapping[str, int], optimizer: Any) -> list[tuple[int, ...]]:
    """opt_einsum's path for a network given by legs (one tensor: one step)."""
    if len(legs) == 1:
        return [(0,)]
    shapes = [tuple(sizes[x] for x in ls) for ls in legs]
    path, _ = oe.contract_path(_equation(legs, out_legs), *shapes, shapes=True, optimize=optimizer)
    return [tuple(p) for p in path]


def _conv_groups(inputs: Sequence[StepInput], out_legs: Sequence[str], sizes: Mapping[str, int]) -> tuple[int, ...] | None:
    """Positions of two data tensors and the patterns between them that form a convolution, if any."""
    data = [j for j, t in enumerate(inputs) if not t.constant]
    patterns = [j for j, t in enumerate(inputs) if t.node is not None and t.node.kind is NodeKind.PATTERN]
    for x_pos, a in enumerate(data):
        for b in data[x_pos + 1 :]:
            between = [p for p in patterns if set(inputs[p].legs) & set(inputs[a].legs) and set(inputs[p].legs) & set(inputs[b].legs)]
            if not between:
                continue
            group = (a, b, *between)
            outside = {leg for j, t in enumerate(inputs) if j not in group for leg in t.legs} | set(out_legs)
            legs = {leg for j in group for leg in inputs[j].legs}
            if match_conv([inputs[j] for j in group], legs & outside, sizes) is not None:
                return group
    return None


def _constant_pair(inputs: Sequence[StepInput]) -> tuple[int, int] | None:
    constants = [j for j, t in enumerate(inputs) if t.constant]
    for x_pos, a in enumerate(constants):
        for b in constants[x_pos + 1 :]:
            if set(inputs[a].legs) & set(inputs[b].legs):
                return a, b
    return None


def _gather_pair(inputs: Sequence[StepInput]) -> tuple[int, int] | None:
    """A data tensor and a pattern it reads along the pattern's input leg (an unfold)."""
    for p, t in enumerate(inputs):
        if t.node is None or t.node.kind is not NodeKind.PATTERN:
            continue
        for j, d in enumerate(inputs):
            if not d.constant and t.legs[2] in d.legs:
                return j, p
    return None


def _with_prefix(
    inputs: Sequence[StepInput], out_legs: Sequence[str], sizes: Mapping[str, int], pick: Any
) -> tuple[list[tuple[int, ...]], list[StepInput]]:
    """Contract the groups ``pick(current inputs)`` finds, one after another; return the steps and what is left."""
    current = list(inputs)
    steps: list[tuple[int, ...]] = []
    while len(current) > 1:
        group = pick(current)
        if group is None:
            break
        outside = {leg for j, t in enumerate(current) if j not in group for leg in t.legs} | set(out_legs)
        legs = tuple(dict.fromkeys(leg for j in group for leg in current[j].legs if leg in outside))
        merged = StepInput(legs, all(current[j].constant for j in group), None)
        steps.append(tuple(sorted(group)))
        current = [t for j, t in enumerate(current) if j not in group] + [merged]
    return steps, current


def candidate_paths(
    inputs: Sequence[StepInput], out_legs: Sequence[str], sizes: Mapping[str, int], backend: str
) -> list[tuple[str, list[tuple[int, ...]]]]:
    """Named candidate orders: structural ones (convolutions, constants, gathers first) and opt_einsum's/cotengra's."""
    legs = [t.legs for t in inputs]
    if len(inputs) == 1:
        # a permutation needs no step (a view); anything else is one reduction
        return [("identity", [])] if sorted(legs[0]) == sorted(out_legs) else [("single", [(0,)])]
    found: list[tuple[str, list[tuple[int, ...]]]] = []
    structural = [("constants first", lambda cur: _constant_pair(cur))]
    if backend_named(backend).is_torch:
        structural.insert(0, ("convolution", lambda cur: _conv_groups(cur, out_legs, sizes)))
        if gathers.FUSED_GATHERS:
            structural.append(("fused gathers", lambda cur: gathers.fused_gather_group(cur, out_legs, sizes)))
        structural.append(("gathers first", lambda cur: _gather_pair(cur)))
    for name, pick in structural:
        prefix, rest = _with_prefix(inputs, out_legs, sizes, pick)
        if prefix:
            tail = opt_einsum_path([t.legs for t in rest], out_legs, sizes, "dp") if len(rest) > 1 else []
            found.append((name, prefix + tail))
    for objective in DP_OBJECTIVES:
        optimizer = oe.paths.DynamicProgramming(minimize=objective, search_outer=True)
        found.append((f"dp-{objective}", opt_einsum_path(legs, out_legs, sizes, optimizer)))
    found.append(("greedy", opt_einsum_path(legs, out_legs, sizes, "greedy")))
    path = _cotengra_path(legs, out_legs, sizes)
    if path is not None:
        found.append(("cotengra-optimal", path))
    return found


def _cotengra_path(legs: Sequence[Sequence[str]], out_legs: Sequence[str], sizes: Mapping[str, int]) -> list[tuple[int, ...]] | None:
    """cotengra's exact search when cotengra is installed (fast for layer-sized networks)."""
    try:
        import cotengra  # type: ignore[import-not-found]
    except ImportError:
        return None
    used = {leg for ls in legs for leg in ls}
    path = cotengra.array_contract_path(
        [tuple(ls) for ls in legs], tuple(out_legs), size_dict={leg: sizes[leg] for leg in used}, optimize="optimal"
    )
    return [tuple(int(i) for i in step) for step in path]


def rank(
    named: Sequence[tuple[str, Sequence[Sequence[int]]]], inputs: Sequence[StepInput], out_legs: Sequence[str], sizes: Mapping[str, int], backend: str
) -> list[Candidate]:
    """Score candidate orders with the structure-aware model; the best (first on ties) is marked ``chosen``."""
    scored = []
    seen: set[tuple[tuple[int, ...], ...]] = set()
    memo: dict[Any, StepCost] = {}  # the same step recurs across candidate orders
    for name, path in named:
        key = tuple(tuple(p) for p in path)
        if key in seen:
            continue
        seen.add(key)
        costs = path_costs(inputs, out_legs, sizes, key, backend, memo)
        scored.append(
            Candidate(
                name,
                key,
                sum(c.flops_dense for c in costs),
                sum(c.flops for c in costs),
                sum(c.moved for c in costs),
                max((c.size for c in costs if c.kind != "folded"), default=0),
                total_time(costs),
            )
        )
    best = min(range(len(scored)), key=lambda j: scored[j].time)
    return [replace(c, chosen=(j == best)) for j, c in enumerate(scored)]


def path_costs(
    inputs: Sequence[StepInput],
    out_legs: Sequence[str],
    sizes: Mapping[str, int],
    path: Sequence[Sequence[int]],
    backend: str,
    memo: dict[Any, StepCost] | None = None,
) -> list[StepCost]:
    """The structure-aware cost of every step of ``path`` (``memo``: costs of steps already priced, by step)."""
    from tnderiv.plan.program import simulate, step_cost

    legs_of = {j: t for j, t in enumerate(inputs)}
    costs = []
    for c in simulate([t.legs for t in inputs], out_legs, path):
        step_inputs = [legs_of[j] for j in c.ids]
        if memo is None:
            costs.append(step_cost(step_inputs, c.out_legs, sizes, backend))
        else:
            step = (tuple(step_inputs), tuple(c.out_legs))
            cost = memo.get(step)
            if cost is None:
                cost = memo[step] = step_cost(step_inputs, c.out_legs, sizes, backend)
            costs.append(cost)
        legs_of[c.out_id] = StepInput(c.out_legs, all(t.constant for t in step_inputs), None)
    return costs
