"""Model shapes at the edges of what ``Curvature`` claims, each against the dense oracles: cross-entropy on
``[N, C, L]`` outputs with ``ignore_index``, soft labels, unused and frozen parameters, an output object with
``.logits``, train-mode dropout between layers, an in-place ReLU after a layer, and a subclass of a layer that
changes its ``forward`` (a fallback, not the layer's diagram)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
from curvature_oracles import Oracle
from torch import nn
from torch.nn import functional as F

from tnderiv.model import Curvature

DT = torch.float64
TOL = {"rtol": 1e-9, "atol": 1e-11}
Q = ("grad", "per_sample_grad", "sum_grad_squared", "ggn_diag", "per_sample_ggn_diag", "ggn_block")


def _check(res, oracle: Oracle, names=None) -> None:
    psg = oracle.psg()
    for p in names or oracle.names:
        module, _, local = p.rpartition(".")
        entry = res[module]
        torch.testing.assert_close(entry["per_sample_grad"][local], psg[p], **TOL)
        torch.testing.assert_close(entry["sum_grad_squared"][local], (psg[p] ** 2).sum(0), **TOL)
        torch.testing.assert_close(entry["ggn_diag"][local], oracle.ggn_diag(p), **TOL)
        torch.testing.assert_close(entry["per_sample_ggn_diag"][local], oracle.per_sample_ggn_diag(p), **TOL)
        torch.testing.assert_close(entry["ggn_block"][local], oracle.ggn_block(p), **TOL)


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(3)


def test_cross_entropy_on_channels_first_sequences_with_ignore_index() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv1d(3, 4, 1)).to(DT)
    g = _gen()
    x, y = torch.randn(3, 2, 5, generator=g, dtype=DT), torch.randint(0, 4, (3, 5), generator=g)
    y[0, :] = 7  # one sample entirely ignored
    y[2, 1] = 7
    loss = nn.CrossEntropyLoss(ignore_index=7)
    res = Curvature(model, loss).compute(x, y, Q, set_grad=False)
    oracle = Oracle(model, loss, x, y)
    assert oracle.D == 9
    _check(res, oracle)
    assert float(res["0"]["per_sample_grad"]["weight"][0].abs().max()) == 0.0


def test_soft_label_cross_entropy() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(DT)
    g = _gen()
    x = torch.randn(4, 3, generator=g, dtype=DT)
    y = torch.softmax(torch.randn(4, 3, generator=g, dtype=DT), 1)  # probabilities, rows sum to 1
    res = Curvature(model, nn.CrossEntropyLoss()).compute(x, y, Q, set_grad=False)
    _check(res, Oracle(model, nn.CrossEntropyLoss(), x, y))


class WithExtras(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(3, 4)
        self.frozen.requires_grad_(False)
        self.used = nn.Linear(4, 3)
        self.unused = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.used(torch.tanh(self.frozen(x))))  # HuggingFace-style output object


def test_unused_frozen_parameters_and_a_logits_object() -> None:
    torch.manual_seed(0)
    model = WithExtras().to(DT)
    g = _gen()
    x, y = torch.randn(4, 3, generator=g, dtype=DT), torch.randint(0, 3, (4,), generator=g)
    ref = copy.deepcopy(model)
    F.cross_entropy(ref(x).logits, y).backward()
    res = Curvature(model, nn.CrossEntropyLoss()).compute(x, y, Q)
    assert "frozen" not in res
    assert any("unused" in note for note in res.notes)
    torch.testing.assert_close(res["unused"]["grad"]["weight"], torch.zeros(2, 2, dtype=DT), rtol=0, atol=0)
    for name, p in model.named_parameters():  # .grad exactly as backward leaves it: None where unused or frozen
        expected = dict(ref.named_parameters())[name].grad
        assert (p.grad is None) == (expected is None), name
        if expected is not None:
            torch.testing.assert_close(p.grad, expected, rtol=1e-12, atol=1e-14)

    class Plain(nn.Module):  # the same function returning the tensor, for the oracle
        def __init__(self, inner: WithExtras) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x).logits

    oracle = Oracle(Plain(model), nn.CrossEntropyLoss(), x, y, names=["inner.used.weight", "inner.used.bias"])
    psg = oracle.psg()
    torch.testing.assert_close(res["used"]["per_sample_grad"]["weight"], psg["inner.used.weight"], **TOL)
    torch.testing.assert_close(res["used"]["ggn_block"]["bias"], oracle.ggn_block("inner.used.bias"), **TOL)


class Replay(nn.Module):
    """The dropout model with the mask it drew as a second input (so that each sample keeps its own mask)."""

    def __init__(self, seq: nn.Sequential) -> None:
        super().__init__()
        self.seq = seq

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.seq[3](self.seq[1](self.seq[0](x)) * mask)


def test_train_mode_dropout_between_layers() -> None:
    """Autograd carries the mask drawn in the one forward; the oracle replays that mask."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Dropout(0.5), nn.Linear(5, 3)).to(DT).train()
    g = _gen()
    x, y = torch.randn(4, 3, generator=g, dtype=DT), torch.randint(0, 3, (4,), generator=g)
    torch.manual_seed(11)
    res = Curvature(model, nn.CrossEntropyLoss()).compute(x, y, (*Q, "kfac"), set_grad=False)
    torch.manual_seed(11)
    mask = F.dropout(torch.ones(4, 5, dtype=DT), 0.5, training=True)
    assert (mask == 0).any()
    replay = Replay(model)
    oracle = Oracle(replay, nn.CrossEntropyLoss(), (x, mask), y)
    psg = oracle.psg()
    for p in ("0.weight", "0.bias", "3.weight", "3.bias"):
        module, _, local = p.rpartition(".")
        torch.testing.assert_close(res[module]["per_sample_grad"][local], psg[f"seq.{p}"], **TOL)
        torch.testing.assert_close(res[module]["ggn_block"][local], oracle.ggn_block(f"seq.{p}"), **TOL)
        torch.testing.assert_close(res[module]["per_sample_ggn_diag"][local], oracle.per_sample_ggn_diag(f"seq.{p}"), **TOL)
    _, cols = oracle.layer_columns({"3": model[3]})["3"]
    h = (torch.tanh(model[0](x)) * mask).detach()
    torch.testing.assert_close(res["3"]["kfac"].A[0], h.T @ h / 4, **TOL)
    torch.testing.assert_close(res["3"]["kfac"].G[0], torch.einsum("rni,rnj->ij", cols, cols), **TOL)


def test_in_place_relu_after_a_layer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(inplace=True), nn.Linear(5, 3)).to(DT)
    g = _gen()
    x, y = torch.randn(4, 3, generator=g, dtype=DT), torch.randint(0, 3, (4,), generator=g)
    res = Curvature(model, nn.CrossEntropyLoss()).compute(x, y, Q, set_grad=False)
    _check(res, Oracle(model, nn.CrossEntropyLoss(), x, y))


class ScaledLinear(nn.Linear):
    """A Linear whose ``forward`` is not the layer's: it must not get the Linear diagram."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * torch.tanh(super().forward(x))


def test_layer_subclass_with_its_own_forward_is_a_fallback() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(ScaledLinear(3, 4), nn.Linear(4, 3)).to(DT)
    g = _gen()
    x, y = torch.randn(4, 3, generator=g, dtype=DT), torch.randint(0, 3, (4,), generator=g)
    res = Curvature(model, nn.CrossEntropyLoss()).compute(x, y, (*Q, "kfac"), set_grad=False)
    oracle = Oracle(model, nn.CrossEntropyLoss(), x, y)
    _check(res, oracle)
    assert "fallback" in next(line for line in res.report().splitlines() if line.strip().startswith("0 ["))
    torch.testing.assert_close(res["0"]["kfac"].to_dense(), oracle.joint_block(["0.weight", "0.bias"]), **TOL)


class Branchy(nn.Module):
    """Data-dependent control flow in the root's forward (vmap cannot re-run it) and an unused layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.spare = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) if float(x.abs().sum()) > 0 else self.a(-x)


def test_unused_parameter_does_not_re_run_the_root() -> None:
    torch.manual_seed(0)
    model = Branchy().to(DT)
    g = _gen()
    x, y = torch.randn(4, 3, generator=g, dtype=DT), torch.randint(0, 3, (4,), generator=g)
    res = Curvature(model, nn.CrossEntropyLoss()).compute(x, y, ("grad", "per_sample_grad", "kfac"), set_grad=False)
    assert [n for n in res.notes if "spare" in n] and "spare" not in res.report().split("note:")[0]
    # vmap cannot run this model either: per-sample gradients by a loop over samples
    loop = torch.stack([torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]) / 4, model.a.weight)[0] for i in range(4)])
    torch.testing.assert_close(res["a"]["per_sample_grad"]["weight"], loop, **TOL)
