"""The one key builder: what a key depends on, and None for arguments the slow path must reject."""

from __future__ import annotations

import torch

from tnderiv.plan.keys import call_key, place, plan_key


def test_plan_key_separates_shapes_places_optimizers_and_options() -> None:
    x = torch.zeros(2, 3)
    base = plan_key("expr", {"x": (2, 3), "w": (4, 3)}, x, "auto", True)
    assert base == plan_key("expr", {"w": [4, 3], "x": (2, 3)}, torch.ones(2, 3), "auto", True)  # order, values: no
    for other in (
        plan_key("expr", {"x": (2, 4), "w": (4, 3)}, x, "auto", True),
        plan_key("expr", {"x": (2, 3), "w": (4, 3)}, x.double(), "auto", True),
        plan_key("expr", {"x": (2, 3), "w": (4, 3)}, x, "greedy", True),
        plan_key("expr", {"x": (2, 3), "w": (4, 3)}, x, [(0, 1)], True),
        plan_key("expr", {"x": (2, 3), "w": (4, 3)}, x, "auto", False),
        plan_key("other", {"x": (2, 3), "w": (4, 3)}, x, "auto", True),
    ):
        assert other != base
    assert place(x) == ("torch", torch.device("cpu"), torch.float32)


def test_call_key_reads_shapes_dtypes_devices_and_rejects_unusual_arguments() -> None:
    x, w = torch.zeros(2, 3), torch.zeros(4, 3)
    key = call_key(("spec", "forward"), {"x": x, "weight": w}, "auto", None)
    assert key == call_key(("spec", "forward"), {"x": torch.ones(2, 3), "weight": w}, "auto", None)
    assert key != call_key(("spec", "forward"), {"x": x.double(), "weight": w.double()}, "auto", None)
    assert key != call_key(("spec", "forward"), {"x": torch.zeros(5, 3), "weight": w}, "auto", None)
    assert call_key(("spec", "forward"), {"x": [[0.0] * 3] * 2}, "auto") is None  # not an array
    assert call_key(("spec", "forward"), {"x": x}, "auto", [1, 2]) is None  # an unhashable option


def test_diagrams_are_keyed_by_exact_structure() -> None:
    """Identical diagrams built twice share a plan; a renamed copy is equal but plans again (never confused)."""
    import numpy as np

    import tnderiv
    from tnderiv.ir import Diagram, operand, size_symbol

    def matmul(inner: str) -> Diagram:
        sizes = {"i": size_symbol("I"), inner: size_symbol("J"), "k": size_symbol("K")}
        return Diagram((operand("a", "i", inner), operand("b", inner, "k")), ("i", "k"), sizes)

    first, again, renamed = matmul("j"), matmul("j"), matmul("q")
    assert first == renamed and first.exact_key == again.exact_key and first.exact_key != renamed.exact_key
    shapes = {"a": (2, 3), "b": (3, 4)}
    plan = tnderiv.plan(first, shapes, dtype=torch.float64)
    assert tnderiv.plan(again, shapes, dtype=torch.float64) is plan
    other = tnderiv.plan(renamed, shapes, dtype=torch.float64)
    a, b = torch.randn(2, 3, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    np.testing.assert_allclose(other(a=a, b=b).numpy(), (a @ b).numpy(), rtol=1e-12)
