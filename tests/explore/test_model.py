"""The explorer's data model: candidates checked against opt_einsum's own PathInfo, exports against torch's layers."""

from __future__ import annotations

import opt_einsum as oe
import pytest
import torch
import torch.nn.functional as F

import tnderiv
from tnderiv.explore.model import build_report, covered
from tnderiv.explore.settings import Settings, make_target, settings_from_json, spec_text

CASES = [
    ("conv2d", "vjp_weight", {"N": 3, "I0": 7, "I1": 6}),
    ("conv2d:stride=2,padding=1,groups=2", "vjp_x", {"N": 2, "I0": 9, "I1": 8}),
    ("conv1d:kernel=2,stride=2", "per_sample_grad", {"N": 3, "I0": 8}),
    ("linear:shared=1", "vjp_weight", {"N": 2, "S0": 5}),
    ("conv1d:padding=same,padding_mode=reflect", "kfac_input_expand", {"N": 2, "I0": 6}),
    ("conv_transpose2d:stride=2,dilation=2", "vjp_weight", {"N": 2, "I0": 4, "I1": 3}),
]


def _einsum(report: dict) -> tuple[str, list[tuple[int, ...]]]:
    """The network the paths address, rebuilt from the report's own node and leg lists (single letters)."""
    nodes = [report["diagram"]["nodes"][j] for j in report["network"]]
    size = {leg["name"]: leg["size"] for leg in report["diagram"]["legs"]}
    letters = {leg: oe.get_symbol(j) for j, leg in enumerate(size)}
    out = [leg["name"] for leg in report["diagram"]["legs"] if leg["open"]]
    # the open legs in the diagram's own order (the order of the result's axes)
    order = report["diagram"]["text"].rsplit("->[", 1)[1].rstrip("]").split(",")
    out = [leg for leg in order if leg in out]
    equation = ",".join("".join(letters[x] for x in n["legs"]) for n in nodes) + "->" + "".join(letters[x] for x in out)
    return equation, [tuple(size[x] for x in n["legs"]) for n in nodes]


@pytest.mark.parametrize("spec,quantity,sizes", CASES, ids=[f"{s}-{q}" for s, q, _ in CASES])
def test_candidate_flops_match_opt_einsum_path_info(spec: str, quantity: str, sizes: dict) -> None:
    report = build_report(make_target(spec), Settings(quantity=quantity, sizes=tuple(sorted(sizes.items()))))
    equation, shapes = _einsum(report)
    assert report["candidates"], "no candidate orders"
    assert sum(c["tnderiv"] for c in report["candidates"]) == 1
    for row in report["candidates"]:
        if row["optimize"] == "auto":
            continue
        path = [tuple(step) for step in row["path"]]
        info = oe.contract_path(equation, *shapes, shapes=True, optimize=path)[1]
        assert row["flops_dense"] == info.opt_cost, row["names"]
        assert len(row["steps"]) == len(path)
        for name in row["names"]:  # a row named after an opt_einsum optimizer has that optimizer's own path
            if name in ("optimal", "greedy", "branch-2", "branch-all", "dp", "auto-hq"):
                assert [tuple(p) for p in oe.contract_path(equation, *shapes, shapes=True, optimize=name)[0]] == path
        assert row["peak_size"] <= max(info.size_list)
        assert row["steps"][-1]["nodes"] == sorted(report["network"])  # the last step covers every tensor


def test_covered_follows_opt_einsum_convention() -> None:
    # tensors 0..3; (0, 2) → [0, 2] appended; then (0, 1) takes tensors 1 and 3; then the two intermediates
    assert covered([(0, 2), (0, 1), (0, 1)], 4) == [([0, 2], [0, 2]), ([1, 3], [1, 3]), ([], [0, 1, 2, 3])]


def _vjp_weight_oracle(x: torch.Tensor, g: torch.Tensor, stride: int, padding: int, groups: int) -> torch.Tensor:
    w = torch.zeros(g.shape[1], x.shape[1] // groups, 3, 3, dtype=x.dtype, requires_grad=True)
    y = F.conv2d(x, w, stride=stride, padding=padding, groups=groups)
    (grad,) = torch.autograd.grad(y, w, g)
    return grad


def test_every_exported_path_reproduces_torch() -> None:
    spec = "conv2d:stride=2,padding=1,groups=2"
    report = build_report(make_target(spec), Settings(quantity="vjp_weight", sizes=(("I0", 7), ("I1", 6), ("N", 2))))
    x = torch.randn(report["shapes"]["x"], dtype=torch.float64)
    g = torch.randn(report["shapes"]["grad_out"], dtype=torch.float64)
    expected = _vjp_weight_oracle(x, g, 2, 1, 2)
    layer = tnderiv.Conv(4, 4, 3, dims=2, stride=2, padding=1, groups=2)
    for row in report["candidates"]:
        export = row["export"]["json"]
        assert export["spec"] == spec and export["quantity"] == "vjp_weight"
        plan = tnderiv.plan(layer, export["shapes"], quantity="vjp_weight", optimize=export["optimize"], dtype=torch.float64)
        torch.testing.assert_close(plan(x=x, grad_out=g).reshape(expected.shape), expected, rtol=1e-10, atol=1e-10)
        if row["optimize"] != "auto":
            assert (plan.flops, plan.dense_flops, plan.peak_size) == (row["flops"], row["flops_dense"], row["peak_size"])


def test_export_python_snippet_runs() -> None:
    report = build_report(make_target("conv1d:stride=2"), Settings(quantity="vjp_weight"))
    namespace: dict = {}
    row = report["candidates"][-1]
    exec(row["export"]["python"].replace("print(plan)", ""), namespace)  # the snippet the page shows, as written
    assert namespace["plan"].dense_flops == row["flops_dense"]


def test_sum_terms_are_explored_one_at_a_time() -> None:
    target = make_target("conv2d")
    first = build_report(target, Settings(quantity="forward"))
    second = build_report(target, Settings(quantity="forward", term=1))
    assert len(first["terms"]) == 2 and second["term"] == 1
    assert [n["name"] for n in second["diagram"]["nodes"]][0] == "bias"
    x = torch.randn(first["shapes"]["x"], dtype=torch.float64)
    w = torch.randn(first["shapes"]["weight"], dtype=torch.float64)
    b = torch.randn(first["shapes"]["bias"], dtype=torch.float64)
    expected = F.conv2d(x, w.reshape(2, 2, 3, 3)) + b.reshape(1, 2, 1, 1)
    expr = tnderiv.diagram(tnderiv.Conv(2, 2, 3, dims=2), "forward")
    total = 0
    for j, report in enumerate((first, second)):
        export = report["candidates"][0]["export"]["json"]
        plan = tnderiv.plan(expr.terms[j], export["shapes"], optimize=export["optimize"], dtype=torch.float64)
        named = {"x": x, "weight": w, "bias": b}
        total = total + plan(**{k: named[k] for k in plan.operand_names})
    torch.testing.assert_close(total.reshape(expected.shape), expected)


def test_spec_text_round_trips_torch_modules() -> None:
    module = torch.nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2), groups=2, padding_mode="reflect")
    text = spec_text(tnderiv.layers.base.spec_of(module))
    assert text is not None
    assert make_target(text).layer == tnderiv.layers.base.spec_of(module)
    assert spec_text(tnderiv.layers.base.spec_of(torch.nn.Conv1d(2, 2, 4, padding="same"))) is None  # asymmetric


def test_simplify_off_shows_the_raw_diagram_and_no_strip() -> None:
    target = make_target("conv2d")
    on = build_report(target, Settings(quantity="vjp_weight"))
    off = build_report(target, Settings(quantity="vjp_weight", simplify=False))
    assert on["strip"] is not None and "delta elimination" in on["strip"]["rules"]
    assert off["strip"] is None
    assert len(off["diagram"]["nodes"]) > len(on["diagram"]["nodes"])  # the δ nodes the rules remove


@pytest.mark.parametrize(
    "body,message",
    [
        ([], "expected a JSON object"),
        ({"code": "import os"}, "unknown keys ['code']"),
        ({"spec": 3}, "spec=3"),
        ({"sizes": {"N": 0}}, "sizes['N']=0"),
        ({"sizes": {"N": True}}, "sizes['N']=True"),
        ({"simplify": "yes"}, "simplify='yes'"),
        ({"term": -1}, "term=-1"),
    ],
)
def test_settings_are_checked(body: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        settings_from_json(body)


def test_invalid_hyperparameter_raises_the_library_error() -> None:
    with pytest.raises(ValueError, match="not divisible by groups"):
        build_report(make_target("conv2d"), Settings(spec="conv2d:in=3,groups=2", quantity="vjp_weight"))
    with pytest.raises(ValueError, match="unknown layer"):
        build_report(make_target("conv2d"), Settings(spec="conv9d", quantity="vjp_weight"))


def test_a_diagram_is_its_own_quantity() -> None:
    d = tnderiv.diagram(tnderiv.Linear(3, 4), "vjp_weight")
    explorer = tnderiv.explore(d, serve=False)
    report = explorer.report()
    assert report["editable"] is False and report["quantities"] == [] and report["settings"]["quantity"] is None
    assert report["candidates"][0]["export"]["json"]["optimize"] is not None
    with pytest.raises(ValueError, match="a diagram is its own quantity"):
        tnderiv.explore(d, "vjp_x", serve=False)


def test_drawing_names_every_node_and_leg_with_size_and_kind() -> None:
    import xml.etree.ElementTree as ET

    report = build_report(make_target("conv1d:stride=2"), Settings(quantity="vjp_weight", sizes=(("I0", 9), ("N", 2))))
    root = ET.fromstring(report["diagram"]["svg"])
    ns = "{http://www.w3.org/2000/svg}"
    titles = {g.get("data-leg"): g.find(f"{ns}title").text for g in root.iter(f"{ns}g") if g.get("data-leg")}
    # o0 = floor((9 - 3) / 2) + 1 = 4, summed between the pattern and grad_out
    assert titles["o0"] == "leg o0 · size 4 = floor(I0/2 - 3/2) + 1 · summed"
    assert titles["c_in"] == "leg c_in · size 2 · open"
    nodes = {g.get("data-node"): g.find(f"{ns}title").text for g in root.iter(f"{ns}g") if g.get("data-node")}
    assert nodes["0"] == "x[n, g, c_in, i0] · 2×1×2×9 = 36 elements · operand (runtime data)"
    assert len(nodes) == len(report["diagram"]["nodes"])
