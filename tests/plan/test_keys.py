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
