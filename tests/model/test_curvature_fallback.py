"""Modules without a tnderiv spec, tied weights and repeated modules: named in the report, exact where KFAC is
not defined, and ``params=`` selections; values against the dense oracles (``curvature_oracles``)."""

from __future__ import annotations

import copy

import pytest
import torch
from curvature_cases import CASES
from curvature_oracles import Oracle

from tnderiv.model import Curvature, ExactCurvature

TOL = {"rtol": 1e-9, "atol": 1e-11}


def _value(res, canonical: str, q: str) -> torch.Tensor:
    module, _, local = canonical.rpartition(".")
    return res[module][q][local]


def _report_line(report: str, module: str) -> str:
    lines = [line.strip() for line in report.splitlines() if line.strip().startswith(f"{module} [")]
    assert len(lines) == 1, report
    return lines[0]


def test_report_names_the_fallback_modules() -> None:
    case = CASES["fallback"]
    model, x, y = case.make()
    report = Curvature(model, case.loss()).compute(x, y, ("grad", "ggn_diag"), set_grad=False).report()
    assert "fallback" in _report_line(report, "(model)") and "[FallbackModel]" in report
    assert "fallback" in _report_line(report, "emb") and "[Embedding]" in report
    assert "fallback" in _report_line(report, "mha") and "[MultiheadAttention]" in report
    assert "derived" in _report_line(report, "head")
    for p in ("pos", "emb.weight", "mha.in_proj_weight", "mha.out_proj.weight", "head.weight"):
        assert f"{p}:" in report


@pytest.mark.parametrize(("name", "module"), [("tied", "out"), ("twice", "lin")])
def test_report_names_tied_and_repeated(name: str, module: str) -> None:
    case = CASES[name]
    model, x, y = case.make()
    res = Curvature(model, case.loss()).compute(x, y, ("grad", "kfac"), set_grad=False)
    assert "tied or repeated" in _report_line(res.report(), module)
    assert "ExactCurvature(ggn_block" in res.report()


def test_large_fallback_blocks_fall_back_to_the_exact_diagonal() -> None:
    """``max_block``: a module with more parameters gets the exact GGN diagonal instead of its block."""
    case = CASES["tied"]
    model, x, y = case.make()
    res = Curvature(model, case.loss(), max_block=10).compute(x, y, ("kfac",), set_grad=False)
    oracle = Oracle(model, case.loss(), x, y, classes_last=True)
    curv = res["emb"]["kfac"]
    assert isinstance(curv, ExactCurvature) and curv.kind == "ggn_diag"
    torch.testing.assert_close(curv.to_dense(), torch.diag(oracle.ggn_diag("emb.weight").reshape(-1)), **TOL)
    v = torch.randn(20, dtype=torch.float64)
    torch.testing.assert_close(curv.inverse(0.5).matvec(v), v / (oracle.ggn_diag("emb.weight").reshape(-1) + 0.5), **TOL)


def test_tied_weight_sums_its_uses() -> None:
    """The tied embedding's per-sample gradient is the sum over both uses (input lookup and output head)."""
    case = CASES["tied"]
    model, x, y = case.make()
    res = Curvature(model, case.loss()).compute(x, y, ("per_sample_grad",), set_grad=False)
    oracle = Oracle(model, case.loss(), x, y, classes_last=True)
    psg = oracle.psg()
    torch.testing.assert_close(res["emb"]["per_sample_grad"]["weight"], psg["emb.weight"], **TOL)
    # the sum of both uses: untie the head in a copy, the two separate gradients add up to the tied one
    untied = copy.deepcopy(model)
    untied.out.weight = torch.nn.Parameter(model.emb.weight.detach().clone())
    parts = Oracle(untied, case.loss(), x, y, classes_last=True).psg()
    assert not torch.allclose(parts["emb.weight"], psg["emb.weight"])
    torch.testing.assert_close(parts["emb.weight"] + parts["out.weight"], psg["emb.weight"], **TOL)


ALL_CHEAP = ("grad", "per_sample_grad", "sum_grad_squared", "ggn_diag", "ggn_block", "kfac")


@pytest.mark.parametrize(
    ("name", "selector", "expected"),
    [
        ("mlp", lambda m: ["net.0.weight"], ["net.0.weight"]),
        ("mlp", lambda m: [m.net[2]], ["net.2.weight", "net.2.bias"]),
        ("mlp", lambda m: lambda n, p: n.endswith("bias"), ["net.0.bias", "net.2.bias"]),
        ("fallback", lambda m: [m.mha], ["mha.in_proj_weight", "mha.in_proj_bias", "mha.out_proj.weight", "mha.out_proj.bias"]),
        ("fallback", lambda m: ["pos", "head.bias"], ["pos", "head.bias"]),
        ("tied", lambda m: [m.out], ["emb.weight"]),
    ],
)
def test_params_selection(name: str, selector, expected: list[str]) -> None:
    case = CASES[name]
    model, x, y = case.make()
    res = Curvature(model, case.loss(), params=selector(model)).compute(x, y, ALL_CHEAP, set_grad=False)
    oracle = Oracle(model, case.loss(), x, y, classes_last=case.classes_last, names=expected)
    got = {f"{m}.{p}" if m else p for m in res for q in ("grad",) for p in res[m][q]}
    assert got == set(expected)
    psg = oracle.psg()
    for p in expected:
        torch.testing.assert_close(_value(res, p, "per_sample_grad"), psg[p], **TOL)
        torch.testing.assert_close(_value(res, p, "ggn_block"), oracle.ggn_block(p), **TOL)
    for m in res:
        curv = res[m]["kfac"]
        if isinstance(curv, ExactCurvature):
            names = [f"{m}.{p}" if m else p for p in curv.names]
            assert set(names) <= set(expected)
            torch.testing.assert_close(curv.to_dense(), oracle.joint_block(names), **TOL)


@pytest.mark.parametrize("bias", ["separate", "append"])
def test_kfac_of_a_partial_selection_covers_only_the_selected(bias: str) -> None:
    """``params=`` with a layer's weight but not its bias: KFAC is the weight's block ``G ⊗ A`` alone, and
    ``precondition`` steps only the selected parameters (a bias left out does not join the weight's block)."""
    from curvature_oracles import kfac_oracle, psd_inverse_apply

    case = CASES["mlp"]
    model, x, y = case.make()
    res = Curvature(model, case.loss(), params=["net.0.weight", "net.2.bias"], kfac_bias=bias).compute(x, y, ("grad", "kfac"), set_grad=False)
    oracle = Oracle(model, case.loss(), x, y)
    modules = dict(model.named_modules())
    cols = oracle.layer_columns({"net.0": modules["net.0"], "net.2": modules["net.2"]})
    step = res.precondition(0.2)
    assert set(step) == {"net.0.weight", "net.2.bias"}
    for m, p, keep in (("net.0", "net.0.weight", slice(0, 12)), ("net.2", "net.2.bias", slice(12, 15))):
        full = kfac_oracle(modules[m], *cols[m], approx="expand").dense  # separate: the selected block is exact
        block = full[keep, keep]
        torch.testing.assert_close(res[m]["kfac"].to_dense(), block, **TOL)
        torch.testing.assert_close(step[p].reshape(-1), psd_inverse_apply(block, 0.2, oracle.grad()[p].reshape(-1)), **TOL)


class Recurrent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.GRU(3, 4, batch_first=True)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _recurrent():
    torch.manual_seed(0)
    model = Recurrent().double()
    g = torch.Generator().manual_seed(2)
    return model, torch.randn(4, 5, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (4,), generator=g)


def test_rnn_fallback_refusal_names_the_cause() -> None:
    model, x, y = _recurrent()
    with pytest.raises(ValueError, match=r"module rnn \(GRU\) .*torch.func.vmap could not run it: RuntimeError: Batching rule not implemented"):
        Curvature(model, torch.nn.CrossEntropyLoss()).compute(x, y, ("per_sample_grad",), set_grad=False)
    res = Curvature(model, torch.nn.CrossEntropyLoss(), params=[model.head]).compute(x, y, ("per_sample_grad",), set_grad=False)
    assert set(res) == {"head"}  # the layers after it still work


@pytest.mark.xfail(
    strict=True,
    raises=ValueError,
    reason="GRU/LSTM fallback: torch.func.vmap has no batching rule for aten::gru, and the fallback has no per-sample loop",
)
def test_rnn_fallback_per_sample_gradients() -> None:
    model, x, y = _recurrent()
    res = Curvature(model, torch.nn.CrossEntropyLoss()).compute(x, y, ("per_sample_grad",), set_grad=False)
    weight = model.rnn.weight_hh_l0
    loop = torch.stack([torch.autograd.grad(torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]) / 4, weight)[0] for i in range(4)])
    torch.testing.assert_close(res["rnn"]["per_sample_grad"]["weight_hh_l0"], loop, **TOL)
