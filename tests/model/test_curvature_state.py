"""What ``Curvature.compute`` leaves behind: ``.grad`` as ``loss.backward()`` fills it, and nothing else — no hooks,
no attributes, also after a call that raises; independent ``Curvature`` objects; ``memory_limit`` chunking gives
the same numbers; short ``repr``s; float32 statistics under autocast."""

from __future__ import annotations

import copy

import pytest
import torch
from curvature_cases import CASES
from curvature_oracles import call

from tnderiv.model import Curvature

TOL = {"rtol": 1e-12, "atol": 1e-14}


def _backward_grads(model: torch.nn.Module, loss_fn, x, y, classes_last: bool = False) -> dict[str, torch.Tensor]:
    ref = copy.deepcopy(model)
    out = call(ref, x)
    loss_fn(out.movedim(-1, 1) if classes_last else out, y).backward()
    return {n: p.grad for n, p in ref.named_parameters()}


@pytest.mark.parametrize("name", ["mlp", "tied", "dict"])
def test_set_grad_fills_and_accumulates_like_backward(name: str) -> None:
    case = CASES[name]
    model, x, y = case.make()
    expected = _backward_grads(model, case.loss(), x, y, case.classes_last)
    curv = Curvature(model, case.loss())
    curv.compute(x, y, ("grad", "sum_grad_squared"))
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], **TOL)
    curv.compute(x, y, ("batch_l2",))  # accumulates, as a second backward would
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, 2 * expected[n], **TOL)


def test_set_grad_with_a_selection_fills_every_parameter_like_backward() -> None:
    case = CASES["mlp"]
    model, x, y = case.make()
    expected = _backward_grads(model, case.loss(), x, y)
    Curvature(model, case.loss(), params=["net.0.weight"]).compute(x, y, ("ggn_diag",))
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], **TOL)


def test_set_grad_false_leaves_grad_alone() -> None:
    case = CASES["mlp"]
    model, x, y = case.make()
    Curvature(model, case.loss()).compute(x, y, ("grad", "kfac"), set_grad=False)
    assert all(p.grad is None for p in model.parameters())
    marks = {n: torch.full_like(p, 7.0) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = marks[n].clone()
    Curvature(model, case.loss()).compute(x, y, ("grad", "per_sample_grad"), set_grad=False)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, marks[n], rtol=0, atol=0)


def _state(model: torch.nn.Module) -> list:
    """Every hook dict of every module, every attribute name of modules and parameters."""
    snap = []
    for name, m in model.named_modules():
        hooks = [
            m._forward_hooks,
            m._forward_pre_hooks,
            m._backward_hooks,
            m._backward_pre_hooks,
            getattr(m, "_forward_hooks_with_kwargs", {}),
            getattr(m, "_state_dict_hooks", {}),
        ]
        snap.append((name, [len(h) for h in hooks], sorted(vars(m))))
    for name, p in model.named_parameters():
        snap.append((name, sorted(vars(p)), getattr(p, "_backward_hooks", None)))
    return snap


def test_no_state_left_behind() -> None:
    case = CASES["fallback"]
    model, x, y = case.make()
    before = _state(model)
    Curvature(model, case.loss()).compute(x, y, ("per_sample_grad", "kfac", "ggn_diag"), set_grad=False)
    assert _state(model) == before
    assert all(p.grad is None for p in model.parameters())


class Exploding(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.shape[0] == 5:
            raise RuntimeError("boom inside forward")
        return self.b(h)


def test_hooks_removed_when_compute_raises() -> None:
    model = Exploding().double()
    before = _state(model)
    curv = Curvature(model, torch.nn.CrossEntropyLoss())
    with pytest.raises(RuntimeError, match="boom inside forward"):
        curv.compute(torch.randn(5, 3, dtype=torch.float64), torch.zeros(5, dtype=torch.long), ("ggn_diag",))
    assert _state(model) == before
    with pytest.raises(ValueError, match="y has shape"):  # raised after the forward ran
        curv.compute(torch.randn(4, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.long), ("ggn_diag",))
    assert _state(model) == before
    mixing = torch.nn.Sequential(Centered(), model)  # raises in the fallback, after the forward and backward
    before = _state(mixing)
    with pytest.raises(ValueError, match="does not act on each sample separately"):
        Curvature(mixing, torch.nn.CrossEntropyLoss()).compute(
            torch.randn(4, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.long), ("per_sample_grad",)
        )
    assert _state(mixing) == before


class Centered(torch.nn.Module):
    """A custom module with a parameter that mixes the samples of a batch."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(0)) * self.scale


def test_user_hooks_survive_and_run() -> None:
    case = CASES["mlp"]
    model, x, y = case.make()
    calls = []
    handle = model.net[0].register_forward_hook(lambda m, i, o: calls.append(o.shape))
    Curvature(model, case.loss()).compute(x, y, ("kfac",), set_grad=False)
    assert calls == [torch.Size([4, 4])] and len(model.net[0]._forward_hooks) == 1
    handle.remove()


def test_two_curvature_objects_do_not_interfere() -> None:
    case = CASES["mlp"]
    model, x, y = case.make()
    q = ("per_sample_grad", "kfac", "ggn_diag")
    first = Curvature(model, case.loss(), params=[model.net[0]])
    second = Curvature(model, torch.nn.CrossEntropyLoss(reduction="sum"), fisher="empirical", approx="reduce")
    a1 = first.compute(x, y, q, set_grad=False)
    b1 = second.compute(x, y, q, set_grad=False)
    a2 = first.compute(x, y, q, set_grad=False)
    b2 = second.compute(x[:2], y[:2], q, set_grad=False)
    a3 = Curvature(model, case.loss(), params=[model.net[0]]).compute(x, y, q, set_grad=False)
    for res in (a2, a3):
        assert list(res) == ["net.0"]
        torch.testing.assert_close(res["net.0"]["ggn_diag"]["weight"], a1["net.0"]["ggn_diag"]["weight"], **TOL)
        torch.testing.assert_close(res["net.0"]["kfac"].to_dense(), a1["net.0"]["kfac"].to_dense(), **TOL)
    assert set(b1) == {"net.0", "net.2"} and b2["net.2"]["per_sample_grad"]["weight"].shape[0] == 2
    torch.testing.assert_close(b2["net.2"]["per_sample_grad"]["weight"], b1["net.2"]["per_sample_grad"]["weight"][:2], **TOL)


@pytest.mark.parametrize("name", ["mlp", "tied", "encoder"])
def test_memory_limit_chunks_give_the_same_results(name: str) -> None:
    case = CASES[name]
    model, x, y = case.make()
    q = ("kfac", "ggn_diag", "per_sample_ggn_diag", "ggn_block")
    whole = Curvature(model, case.loss()).compute(x, y, q, set_grad=False)
    chunked = Curvature(model, case.loss(), memory_limit=1).compute(x, y, q, set_grad=False)  # one column per chunk
    assert list(whole) == list(chunked)
    for m in whole:
        for name_q in q[1:]:
            for p, t in whole[m][name_q].items():
                torch.testing.assert_close(chunked[m][name_q][p], t, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(chunked[m]["kfac"].to_dense(), whole[m]["kfac"].to_dense(), rtol=1e-10, atol=1e-13)


def test_memory_limit_refuses_to_chunk_the_gram() -> None:
    case = CASES["mlp"]
    model, x, y = case.make()
    with pytest.raises(ValueError, match="ggn_gram.*cannot be chunked"):
        Curvature(model, case.loss(), memory_limit=1).compute(x, y, ("ggn_gram",), set_grad=False)


def test_reprs_are_short() -> None:
    case = CASES["encoder"]
    model, x, y = case.make()
    curv = Curvature(model, case.loss())
    res = curv.compute(x, y, ("grad", "per_sample_grad", "sum_grad_squared", "batch_l2", "variance", "batch_dot", "kfac", "ggn_diag", "per_sample_ggn_diag", "ggn_block", "ggn_gram"))
    for text in (repr(res), repr(curv)):
        assert len(text) < 500 and "tensor(" not in text, text
    assert "N=3" in repr(res) and "more" in repr(res)  # 9 modules: the first few, then a count
    report = res.report()
    assert "tensor(" not in report and all(f"{m} [" in report for m in case.kfac)


def test_autocast_statistics_in_float32() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = Curvature(model, torch.nn.CrossEntropyLoss()).compute(x, y, ("sum_grad_squared", "ggn_diag"), set_grad=False)
    exact = Curvature(model.double(), torch.nn.CrossEntropyLoss()).compute(x.double(), y, ("sum_grad_squared", "ggn_diag"), set_grad=False)
    for q in ("sum_grad_squared", "ggn_diag"):
        got, ref = res["2"][q]["weight"], exact["2"][q]["weight"]
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), ref, rtol=0.1, atol=1e-3)
