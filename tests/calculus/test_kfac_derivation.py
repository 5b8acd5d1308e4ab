"""The KFAC derivation: reduce never unfolds the input, layers given by a diagram, registered diagrams."""

from __future__ import annotations

import math

import pytest
import torch
from cases import kfac_cases as ref
from cases.torch_oracles import ConvConfig
from kfac_helpers import APPROX, DT, _close, _data, _spec

import tnderiv

# ----- the derivation ---------------------------------------------------------------------------------------


def test_reduce_never_unfolds_the_input() -> None:
    """KFAC-reduce sums the positions inside each half first: no intermediate as large as the unfolded input."""
    cfg = ConvConfig(2, 8, 4, (3, 3), (1, 1), (1, 1), 1, batch=4, input_size=(16, 16))
    x, _, y = _data(cfg, 0)
    k = tnderiv.kfac(_spec(cfg), x, torch.randn(y.shape, dtype=DT), approx="reduce")
    unfolded = x.shape[0] * math.prod(y.shape[2:]) * cfg.in_channels * 9
    largest = max(step.size for plan in k.plans["A"] for step in plan.steps())
    assert largest < unfolded / 10, f"largest intermediate {largest} vs unfolded input {unfolded}"
    d = tnderiv.diagram(_spec(cfg), "kfac_input_reduce")
    copies = [set(n.legs) for n in d.nodes if n.name == "x"]
    assert len(copies) == 2 and not (copies[0] & copies[1]) - {"n", "g"}, str(d)


def test_layer_given_only_by_its_diagram() -> None:
    """A dense layer written as a diagram: with its sharing leg declared, KFAC matches the unfold-free
    definition; undeclared, the VJP does not split and the error names the joining leg."""
    from tnderiv.ir import Diagram, operand, size_symbol

    sizes = {"n": size_symbol("N"), "t": size_symbol("T"), "c_in": 3, "c_out": 2}
    forward = Diagram((operand("x", "n", "t", "c_in"), operand("weight", "c_out", "c_in")), ("n", "t", "c_out"), sizes)
    x = torch.randn(4, 5, 3, dtype=DT)
    grad = torch.randn(4, 5, 2, dtype=DT)
    declared = tnderiv.DiagramLayer(forward, ("x",), ("weight",), shared_legs=("t",))
    for approx in APPROX:
        k = tnderiv.kfac(declared, x, grad, approx=approx, loss_average=None)
        _close(k.A, ref.input_factor(x[:, :, None], approx))
        _close(k.G, ref.output_factor(ref.dense_output_rows(grad, False), approx, 1.0))
    undeclared = tnderiv.DiagramLayer(forward, ("x",), ("weight",))
    with pytest.raises(ValueError, match=r"legs \['t'\] join \['x'\] to grad_out"):
        tnderiv.kfac(undeclared, x, grad)


def test_registered_diagrams() -> None:
    spec = tnderiv.Linear(3, 2)
    for quantity in ("kfac_input_expand", "kfac_input_reduce", "kfac_output_expand", "kfac_output_reduce"):
        assert quantity in tnderiv.QUANTITIES
        d = tnderiv.diagram(spec, quantity)
        assert sorted(d.operand_names) in (["x"], ["grad_out"])
