"""Every bad input to ``Curvature`` raises a clear error naming the setting, its value and what was expected."""

from __future__ import annotations

import copy

import pytest
import torch
from curvature_cases import CASES
from torch import nn

from tnderiv.model import Curvature

F64 = torch.float64


@pytest.fixture(scope="module")
def mlp():
    return CASES["mlp"].make()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"loss_fn": nn.NLLLoss()}, TypeError, "loss_fn of type NLLLoss is not supported; expected one of CrossEntropyLoss, MSELoss, BCEWithLogitsLoss"),
        ({"loss_fn": nn.KLDivLoss()}, TypeError, "KLDivLoss is not supported"),
        ({"loss_fn": nn.CrossEntropyLoss(reduction="none")}, ValueError, "reduction='none'; expected 'mean' or 'sum'"),
        ({"loss_fn": nn.CrossEntropyLoss(label_smoothing=0.1)}, ValueError, "label_smoothing=0.1 is not supported"),
        ({"loss_fn": nn.CrossEntropyLoss(weight=torch.ones(3))}, ValueError, "weight= is not supported"),
        ({"loss_fn": nn.BCEWithLogitsLoss(pos_weight=torch.ones(3))}, ValueError, "pos_weight= is not supported"),
        ({"fisher": "bogus"}, ValueError, r"fisher='bogus' is not supported; expected one of \['type-2', 'mc', 'empirical', 'forward-only'\]"),
        ({"approx": "bogus"}, ValueError, "approx='bogus' is not supported; expected one of 'expand', 'reduce'"),
        ({"loss_average": "bogus"}, ValueError, "loss_average='bogus' is not supported"),
        ({"kfac_bias": "bogus"}, ValueError, "kfac_bias='bogus' is not supported; expected one of 'separate', 'append'"),
        ({"mc_samples": 0}, ValueError, "mc_samples=0: expected an int ≥ 1"),
        ({"generator": 3}, TypeError, "generator must be a torch.Generator or None, got int"),
        ({"memory_limit": 0}, ValueError, "memory_limit=0: expected a number of bytes ≥ 1"),
        ({"max_block": 0}, ValueError, "max_block=0: expected an int ≥ 1"),
        ({"params": ["nope"]}, ValueError, "params: no parameter named 'nope'"),
        ({"params": lambda n, p: False}, ValueError, "no trainable parameters selected"),
        ({"params": [nn.Linear(2, 2)]}, ValueError, "module Linear has no parameters in this model"),
        ({"params": [3]}, TypeError, "int is neither a parameter name nor a module"),
    ],
)
def test_bad_settings(mlp, kwargs: dict, error: type, match: str) -> None:
    model = mlp[0]
    kwargs = {"loss_fn": nn.CrossEntropyLoss(), **kwargs}
    with pytest.raises(error, match=match):
        Curvature(model, **kwargs)


def test_model_must_be_a_module() -> None:
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        Curvature("model", nn.CrossEntropyLoss())


def test_frozen_selection() -> None:
    model = copy.deepcopy(CASES["mlp"].make()[0])
    model.net[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"params selects \['net.0.weight'\] but they do not require grad"):
        Curvature(model, nn.CrossEntropyLoss(), params=["net.0.weight"])


@pytest.mark.parametrize(
    ("loss_fn", "y", "error", "match"),
    [
        (nn.CrossEntropyLoss(), torch.zeros(5, dtype=torch.long), ValueError, r"y has shape \(5,\) but the model's output has shape \(4, 3\)"),
        (nn.CrossEntropyLoss(), torch.zeros(4, 1, dtype=torch.long), ValueError, r"y has shape \(4, 1\).*cross-entropy expects class indices of shape \(4,\)"),
        (nn.CrossEntropyLoss(), torch.zeros(4, dtype=torch.bool), TypeError, "y has dtype torch.bool; cross-entropy expects integer class indices"),
        (nn.CrossEntropyLoss(), torch.zeros(4, dtype=F64), ValueError, r"y has shape \(4,\); class probabilities must have the output's shape \(4, 3\)"),
        (nn.CrossEntropyLoss(), [0, 1, 2, 0], TypeError, "y must be a torch.Tensor, got list"),
        (nn.MSELoss(), torch.zeros(4, 2, dtype=F64), ValueError, r"y has shape \(4, 2\); mse expects the output's shape \(4, 3\)"),
        (nn.MSELoss(), torch.zeros(4, 3, dtype=torch.long), TypeError, "y has dtype torch.int64; mse expects floating-point targets"),
        (nn.BCEWithLogitsLoss(), torch.zeros(4, dtype=F64), ValueError, r"y has shape \(4,\); bce_with_logits expects the output's shape \(4, 3\)"),
    ],
)
def test_bad_targets(mlp, loss_fn: nn.Module, y, error: type, match: str) -> None:
    model, x, _ = mlp
    with pytest.raises(error, match=match):
        Curvature(model, loss_fn).compute(x, y, ("grad",), set_grad=False)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("quantities", "error", "match"),
    [
        (("hessian",), ValueError, r"unknown model quantity 'hessian'; valid model quantities are \['batch_dot', 'batch_l2'"),
        ((), ValueError, "no quantities requested; expected names from"),
        (3, TypeError, "quantities=3: expected a name or a sequence of names"),
        ((None,), ValueError, "unknown model quantity None"),
    ],
)
def test_bad_quantities(mlp, quantities, error: type, match: str) -> None:
    model, x, y = mlp
    with pytest.raises(error, match=match):
        Curvature(model, nn.CrossEntropyLoss()).compute(x, y, quantities)


def test_set_grad_must_be_bool(mlp) -> None:
    model, x, y = mlp
    with pytest.raises(TypeError, match="set_grad=1: expected a bool"):
        Curvature(model, nn.CrossEntropyLoss()).compute(x, y, ("grad",), set_grad=1)


def test_forward_only_is_for_kfac_only(mlp) -> None:
    model, x, y = mlp
    with pytest.raises(ValueError, match="fisher='forward-only' \\(G = I\\) is defined for 'kfac' only"):
        Curvature(model, nn.CrossEntropyLoss(), fisher="forward-only").compute(x, y, ("kfac", "ggn_diag"))


def test_forward_only_names_the_module_without_kfac() -> None:
    case = CASES["tied"]
    model, x, y = case.make()
    with pytest.raises(ValueError, match=r"emb.weight of module emb \(Embedding\) has no KFAC.*exclude it with params="):
        Curvature(model, case.loss(), fisher="forward-only").compute(x, y, ("kfac",), set_grad=False)


def test_model_output_must_be_a_tensor(mlp) -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3).double()

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.lin(x), x

    _, x, y = mlp
    with pytest.raises(TypeError, match="the model returned tuple; expected a tensor"):
        Curvature(Pair(), nn.CrossEntropyLoss()).compute(x, y, ("grad",))


@pytest.fixture(scope="module")
def residual_train():
    case = CASES["residual"]
    model, x, y = case.make()
    model.bn.train()
    return model, x, y, case


@pytest.mark.parametrize(
    ("quantities", "fisher"),
    [
        (("per_sample_grad",), "type-2"),
        (("batch_l2",), "type-2"),
        (("variance",), "type-2"),
        (("per_sample_ggn_diag",), "type-2"),
        (("ggn_diag",), "type-2"),
        (("kfac",), "mc"),
        (("ggn_block",), "empirical"),  # the empirical Fisher is a sum over per-sample gradients
    ],
)
def test_per_sample_quantities_through_train_mode_batch_norm_name_the_module(residual_train, quantities, fisher) -> None:
    model, x, y, case = residual_train
    before = {k: v.clone() for k, v in model.bn.state_dict().items()}
    with pytest.raises(ValueError, match=r"module bn \(BatchNorm2d\) is in train mode and couples the samples"):
        Curvature(model, case.loss(), fisher=fisher).compute(x, y, quantities)
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.bn.state_dict().items():  # raised before any work: running statistics untouched
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_kfac_of_a_train_mode_batch_norm_names_the_module(residual_train) -> None:
    model, x, y, case = residual_train
    with pytest.raises(ValueError, match=r"module bn \(BatchNorm2d\): it is in train mode.*params="):
        Curvature(model, case.loss(), fisher="empirical").compute(x, y, ("kfac",), set_grad=False)


def test_batch_level_quantities_work_through_train_mode_batch_norm(residual_train) -> None:
    model, x, y, case = residual_train
    ref = copy.deepcopy(model)
    case.loss()(ref(x), y).backward()
    others = [m for m in (model.conv1, model.conv2, model.fc)]
    res = Curvature(model, case.loss(), fisher="empirical", params=others).compute(x, y, ("grad", "kfac"), set_grad=False)
    for name, p in ref.named_parameters():
        module, _, local = name.rpartition(".")
        if module != "bn":
            torch.testing.assert_close(res[module]["grad"][local], p.grad, rtol=1e-12, atol=1e-14)
    assert set(res) == {"conv1", "conv2", "fc"} and all(res[m]["kfac"].G.shape[-1] > 0 for m in res)


def test_compute_over_errors(mlp) -> None:
    model, x, y = mlp
    curv = Curvature(model, nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="compute_over got no batches"):
        curv.compute_over([], ("grad",))
    with pytest.raises(ValueError, match=r"\['batch_dot'\] pair samples across batches or ranks"):
        curv.compute_over([(x, y), (x, y)], ("batch_dot",), set_grad=False)


def test_result_lookup_and_precondition_errors(mlp) -> None:
    model, x, y = mlp
    res = Curvature(model, nn.CrossEntropyLoss()).compute(x, y, ("grad",), set_grad=False)
    with pytest.raises(KeyError, match="no results for module 'nope'; modules with results: 'net.0', 'net.2'"):
        res["nope"]
    with pytest.raises(ValueError, match="precondition needs the 'kfac' quantity"):
        res.precondition(0.1)


def test_columns_too_large_for_memory_are_refused_or_chunked() -> None:
    """A request over the memory budget is refused before the columns are allocated; ``memory_limit`` chunks it."""
    import tnderiv
    from tnderiv.plan.memory import MemoryBudgetError

    case = CASES["mlp"]
    model, x, y = copy.deepcopy(case.make())
    tnderiv.set_memory_budget(800)  # 3 columns at once need 1,536 bytes; one at a time 704
    try:
        with pytest.raises(MemoryBudgetError, match=r"the type-2 columns needs 1.5 KiB.*nothing was allocated.*memory_limit=<bytes>"):
            Curvature(model, case.loss()).compute(x, y, ("ggn_diag",))
        assert all(p.grad is None for p in model.parameters())
        chunked = Curvature(model, case.loss(), memory_limit=1).compute(x, y, ("ggn_diag",), set_grad=False)
    finally:
        tnderiv.set_memory_budget(None)
    whole = Curvature(model, case.loss()).compute(x, y, ("ggn_diag",), set_grad=False)
    torch.testing.assert_close(chunked["net.0"]["ggn_diag"]["weight"], whole["net.0"]["ggn_diag"]["weight"], rtol=1e-12, atol=1e-15)
