"""BL89, HesScale and HesScaleGN against the recursion written out with dense float64 Jacobians, and against exact
Hessian (``torch.func.hessian``) and GGN diagonals on tiny models. Nothing here calls tnderiv for expected values."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tnderiv.model.hesscale import hessian_diagonal, mark_elementwise

DT = torch.float64
TOL = dict(rtol=1e-9, atol=1e-12)
METHODS = ("bl89", "hesscale", "hesscale_gn")
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
ACTIVATIONS = (nn.Tanh, nn.Sigmoid, nn.ELU, nn.Softplus, nn.SiLU, nn.ReLU, nn.GELU)


class Cube(nn.Module):
    """An elementwise module tnderiv does not know: marked by the user."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t**3 / 3


def leaves(model: nn.Sequential, prefix: str = "") -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            out += leaves(child, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", child))
    return out


def dense(f, arg: torch.Tensor) -> torch.Tensor:
    """The whole-batch Jacobian of ``f`` at ``arg`` as a matrix ``[out.numel(), arg.numel()]``."""
    out = f(arg)
    return torch.func.jacrev(f)(arg).reshape(out.numel(), arg.numel())


def second_derivative(module: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """``f″(z)`` of an elementwise module by differentiating ``Σ f′(z)`` with autograd."""
    z = z.detach().requires_grad_(True)
    (first,) = torch.autograd.grad(module(z.clone()).sum(), z, create_graph=True)
    if not first.requires_grad:  # piecewise linear: f″ = 0
        return torch.zeros_like(z)
    (second,) = torch.autograd.grad(first.sum(), z)
    return second


def reference(model: nn.Sequential, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str, elementwise=()) -> dict[str, torch.Tensor]:
    """The recursion with dense matrices: HesScale carries the full Hessian ``H`` down to the last layer's input."""
    mods = leaves(model)
    hs = [x.detach().requires_grad_(True)]
    for _, m in mods:
        hs.append(m(hs[-1].clone()))  # clone: in-place activations keep the recorded input
    loss = loss_fn(hs[-1], y)
    grads = torch.autograd.grad(loss, hs[1:])
    out = hs[-1].detach()
    hess = torch.func.hessian(lambda o: loss_fn(o, y))(out).reshape(out.numel(), out.numel())
    full = hess if method != "bl89" else None
    d = hess.diagonal()
    result = {}
    for i in range(len(mods) - 1, -1, -1):
        path, m = mods[i]
        inp, o = hs[i].detach(), hs[i + 1].detach()
        cur = full.diagonal() if full is not None else d
        for name, p in m.named_parameters(recurse=False):
            jp = dense(lambda t, name=name, m=m, inp=inp: torch.func.functional_call(m, {name: t}, (inp,)), p.detach())
            result[f"{path}.{name}"] = (cur @ jp**2).reshape(p.shape)
        if i == 0:
            break
        if isinstance(m, nn.Dropout) and m.training:
            scale = o / inp  # the forward's mask (inputs are never exactly zero here)
            jac = torch.diag(scale.reshape(-1))
        else:
            jac = dense(lambda t, m=m: m(t.clone()), inp)
        if isinstance(m, ACTIVATIONS) or isinstance(m, tuple(elementwise)):
            fp = jac.diagonal()
            term = 0 if method == "hesscale_gn" else (second_derivative(m, inp) * grads[i]).reshape(-1)
            if full is not None:
                full = jac.T @ full @ jac + torch.diag(term if torch.is_tensor(term) else torch.zeros_like(fp))
            else:
                d = fp**2 * d + term
        elif full is not None:
            full = jac.T @ full @ jac
            if isinstance(m, LAYERS):  # the exact part ends at the last parameterized layer
                d, full = full.diagonal(), None
        else:
            d = (jac**2).T @ d
    return result


def exact_hessian_diagonal(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        h = torch.func.hessian(lambda t, name=name: loss_fn(torch.func.functional_call(model, {name: t}, (x,)), y))(p.detach())
        out[name] = h.reshape(p.numel(), p.numel()).diagonal().reshape(p.shape)
    return out


def exact_ggn_diagonal(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    out_ = model(x).detach()
    hess = torch.func.hessian(lambda o: loss_fn(o, y))(out_).reshape(out_.numel(), out_.numel())
    out = {}
    for name, p in model.named_parameters():
        jac = dense(lambda t, name=name: torch.func.functional_call(model, {name: t}, (x,)), p.detach())
        out[name] = (jac * (hess @ jac)).sum(0).reshape(p.shape)  # diag(Jᵀ H J)
    return out


def flat(result: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"{path}.{name}": v for path, per in result.items() for name, v in per.items()}


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], **tol) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], **(tol or TOL), msg=lambda m, key=key: f"{key}: {m}")


# ----- the recursion, written out ------------------------------------------------------------------------
def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Sequential(nn.Linear(5, 4), nn.Softplus()), nn.Linear(4, 3))


def cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect", groups=2),
        nn.ELU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 2, stride=1, groups=2, bias=False),
        nn.SiLU(),
        nn.AvgPool2d(2, padding=1),
        nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(16, 3),
    )


def cnn1d() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(2, 2, 3, padding=2, dilation=2, padding_mode="circular"),
        nn.ReLU(inplace=True),
        nn.ConvTranspose1d(2, 4, 3, stride=2, groups=2, output_padding=1),
        nn.Sigmoid(),
        nn.AvgPool1d(3, stride=2),
        nn.Identity(),
        nn.Conv1d(4, 2, 2),
    )


def cnn3d() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(1, 2, 2),
        nn.Tanh(),
        nn.AvgPool3d((1, 2, 2), divisor_override=3),
        nn.Flatten(),
        nn.Linear(4, 2),
    )


MODELS = {
    "cnn3d-mse-divisor-override": (cnn3d, (2, 1, 3, 4, 4), nn.MSELoss(), lambda g: torch.randn(2, 2, generator=g, dtype=DT)),
    "mlp-ce-mean": (mlp, (5, 4), nn.CrossEntropyLoss(), lambda g: torch.randint(0, 3, (5,), generator=g)),
    "cnn-ce-sum-dropout-train": (cnn, (2, 2, 6, 6), nn.CrossEntropyLoss(reduction="sum"), lambda g: torch.randint(0, 3, (2,), generator=g)),
    "cnn1d-bce-spatial": (cnn1d, (2, 2, 7), nn.BCEWithLogitsLoss(), lambda g: torch.rand(2, 2, 6, generator=g, dtype=DT)),
    "mlp-mse-sum": (mlp, (4, 4), nn.MSELoss(reduction="sum"), lambda g: torch.randn(4, 3, generator=g, dtype=DT)),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", sorted(MODELS))
def test_matches_the_recursion_with_dense_jacobians(case: str, method: str) -> None:
    make, shape, loss_fn, target = MODELS[case]
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    model = make().to(DT).train()
    x = torch.randn(shape, generator=gen, dtype=DT)
    y = target(gen)
    torch.manual_seed(11)  # the same dropout mask in both forwards
    loss, got = hessian_diagonal(model, loss_fn, x, y, method=method)
    torch.manual_seed(11)
    want = reference(model, loss_fn, x, y, method)
    assert_same(flat(got), want)
    torch.manual_seed(11)
    torch.testing.assert_close(loss, loss_fn(model(x), y))


# ----- exact where theory says so, different where it should be ------------------------------------------
def tiny(*mods: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*mods).to(DT)


def data(n: int, d: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return torch.randn(n, d, generator=gen, dtype=DT), torch.randint(0, classes, (n,), generator=gen)


@pytest.mark.parametrize("loss_fn", [nn.MSELoss(), nn.CrossEntropyLoss(reduction="sum"), nn.CrossEntropyLoss(label_smoothing=0.1)], ids=["mse", "ce-sum", "ce-smoothing"])
def test_single_linear_layer_is_exact_for_every_method(loss_fn: nn.Module) -> None:
    model = tiny(nn.Linear(3, 4))
    x, labels = data(6, 3, 4)
    y = labels if isinstance(loss_fn, nn.CrossEntropyLoss) else torch.randn(6, 4, dtype=DT)
    want = exact_hessian_diagonal(model, loss_fn, x, y)
    for method in METHODS:
        assert_same(flat(hessian_diagonal(model, loss_fn, x, y, method=method)[1]), want)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_probability_targets(smoothing: float) -> None:
    """Class probabilities (any total mass without smoothing; mass one with it) through a hidden layer."""
    model = tiny(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 3))
    x, _ = data(4, 3, 3)
    y = torch.rand(4, 3, dtype=DT, generator=torch.Generator().manual_seed(9))
    y = y / y.sum(1, keepdim=True) if smoothing else 2 * y
    loss_fn = nn.CrossEntropyLoss(label_smoothing=smoothing)
    assert_same(flat(hessian_diagonal(model, loss_fn, x, y, method="hesscale")[1]), exact_hessian_diagonal(model, loss_fn, x, y))
    if smoothing:
        with pytest.raises(ValueError, match="label_smoothing=0.2 and y holds probabilities that do not sum to one"):
            hessian_diagonal(model, loss_fn, x, 2 * y, method="bl89")


def test_one_hidden_layer_hesscale_is_exact_and_bl89_is_not() -> None:
    model = tiny(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = data(5, 3, 3)
    loss_fn = nn.CrossEntropyLoss()
    exact = exact_hessian_diagonal(model, loss_fn, x, y)
    assert_same(flat(hessian_diagonal(model, loss_fn, x, y, method="hesscale")[1]), exact)
    bl89 = flat(hessian_diagonal(model, loss_fn, x, y, method="bl89")[1])
    torch.testing.assert_close(bl89["2.weight"], exact["2.weight"], **TOL)  # the last layer is exact for all
    assert (bl89["0.weight"] - exact["0.weight"]).abs().max() > 1e-3  # BL89 drops the off-diagonal output Hessian
    # HesScaleGN is the exact GGN diagonal here, and differs from the Hessian by the f″ g term
    gn = flat(hessian_diagonal(model, loss_fn, x, y, method="hesscale_gn")[1])
    assert_same(gn, exact_ggn_diagonal(model, loss_fn, x, y))
    assert (gn["0.weight"] - exact["0.weight"]).abs().max() > 1e-3


def test_diagonal_output_hessian_makes_bl89_and_hesscale_agree() -> None:
    model = tiny(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2))
    x, _ = data(5, 3, 2)
    y = torch.randn(5, 2, dtype=DT)
    loss_fn = nn.MSELoss()
    bl89 = flat(hessian_diagonal(model, loss_fn, x, y, method="bl89")[1])
    hesscale = flat(hessian_diagonal(model, loss_fn, x, y, method="hesscale")[1])
    assert_same(bl89, hesscale)
    assert_same(hesscale, exact_hessian_diagonal(model, loss_fn, x, y))


def test_activation_after_the_last_layer() -> None:
    """Linear → Sigmoid → MSE: d_z = f′² H + f″ g is exact; HesScaleGN drops f″ g."""
    model = tiny(nn.Linear(3, 2), nn.Sigmoid())
    x, _ = data(4, 3, 2)
    y = torch.rand(4, 2, dtype=DT)
    loss_fn = nn.MSELoss(reduction="sum")
    exact = exact_hessian_diagonal(model, loss_fn, x, y)
    for method in ("bl89", "hesscale"):
        assert_same(flat(hessian_diagonal(model, loss_fn, x, y, method=method)[1]), exact)
    assert_same(flat(hessian_diagonal(model, loss_fn, x, y, method="hesscale_gn")[1]), exact_ggn_diagonal(model, loss_fn, x, y))


def test_two_hidden_layers_are_approximate() -> None:
    """Below the last layer the off-diagonal Hessian is dropped: HesScale is no longer exact for the first layer."""
    model = tiny(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = data(5, 3, 3)
    loss_fn = nn.CrossEntropyLoss()
    exact = exact_hessian_diagonal(model, loss_fn, x, y)
    got = flat(hessian_diagonal(model, loss_fn, x, y, method="hesscale")[1])
    for key in ("2.weight", "4.weight", "4.bias"):
        torch.testing.assert_close(got[key], exact[key], **TOL)
    assert (got["0.weight"] - exact["0.weight"]).abs().max() > 1e-4


def test_conv_layer_drops_cross_position_terms() -> None:
    """A convolution's parameter diagonal keeps only o = o′ terms of Σ x Π H Π x: exact only for 1×1 outputs."""
    model = tiny(nn.Conv1d(1, 2, 2), nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(3, 1, 3, dtype=DT, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 2, (3,), generator=torch.Generator().manual_seed(2))
    loss_fn = nn.CrossEntropyLoss()
    exact = exact_hessian_diagonal(model, loss_fn, x, y)
    got = flat(hessian_diagonal(model, loss_fn, x, y, method="hesscale")[1])
    torch.testing.assert_close(got["2.weight"], exact["2.weight"], **TOL)
    assert (got["0.weight"] - exact["0.weight"]).abs().max() > 1e-4


def test_marked_elementwise_module_and_inplace_activation() -> None:
    make = lambda: tiny(nn.Linear(3, 4), Cube(), nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))  # noqa: E731
    x, y = data(5, 3, 2)
    loss_fn = nn.CrossEntropyLoss()
    model = make()
    for method in METHODS:
        got = flat(hessian_diagonal(model, loss_fn, x, y, method=method, elementwise=[Cube])[1])
        assert_same(got, reference(model, loss_fn, x, y, method, elementwise=[Cube]))


class Square(nn.Module):
    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t * t


def test_mark_elementwise_registers_a_type() -> None:
    model = tiny(nn.Linear(3, 4), Square(), nn.Linear(4, 2))
    x, y = data(5, 3, 2)
    with pytest.raises(TypeError, match=r"module '1' \(Square\) is not supported"):
        hessian_diagonal(model, nn.CrossEntropyLoss(), x, y, method="bl89")
    mark_elementwise(Square)
    got = flat(hessian_diagonal(model, nn.CrossEntropyLoss(), x, y, method="hesscale")[1])
    assert_same(got, exact_hessian_diagonal(model, nn.CrossEntropyLoss(), x, y))  # one hidden layer: exact
    with pytest.raises(TypeError, match="mark_elementwise expects torch.nn.Module subclasses"):
        mark_elementwise(Square())


def test_params_selects_and_orders() -> None:
    model = tiny(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = data(5, 3, 3)
    loss_fn = nn.CrossEntropyLoss()
    _, got = hessian_diagonal(model, loss_fn, x, y, method="hesscale", params=["2.bias", model[0].weight])
    assert list(got) == ["0", "2"] and list(got["0"]) == ["weight"] and list(got["2"]) == ["bias"]
    exact = exact_hessian_diagonal(model, loss_fn, x, y)
    torch.testing.assert_close(got["0"]["weight"], exact["0.weight"], **TOL)
    with torch.no_grad():  # the caller's grad mode does not matter
        again = hessian_diagonal(model, loss_fn, x, y, method="hesscale", params=["2.bias", "0.weight"])[1]
    torch.testing.assert_close(again["0"]["weight"], got["0"]["weight"], rtol=0, atol=0)
    model[0].bias.requires_grad_(False)
    assert "bias" not in hessian_diagonal(model, loss_fn, x, y, method="bl89")[1]["0"]


# ----- bad input -----------------------------------------------------------------------------------------
def _x_y():
    return torch.randn(2, 3), torch.tensor([0, 1])


@pytest.mark.parametrize(
    ("model", "error", "match"),
    [
        (nn.Linear(3, 2), TypeError, "model must be a torch.nn.Sequential"),
        (nn.Sequential(nn.Linear(3, 2), nn.Sequential(nn.Identity(), nn.BatchNorm1d(2))), TypeError, r"module '1\.1' \(BatchNorm1d\) is not supported"),
        (nn.Sequential(nn.Linear(3, 2), nn.Softmax(dim=1)), TypeError, r"module '1' \(Softmax\) is not supported"),
        (nn.Sequential(nn.Linear(3, 2), nn.PReLU()), TypeError, r"module '1' \(PReLU\)"),
        (nn.Sequential(nn.Linear(3, 4), nn.Unflatten(1, (2, 2)), nn.MaxPool1d(2, return_indices=True)), ValueError, r"module '2' \(MaxPool1d\) has return_indices=True"),
        (nn.Sequential(nn.Linear(3, 4), nn.Unflatten(1, (1, 4)), nn.AvgPool1d(3, ceil_mode=True)), ValueError, r"module '2' \(AvgPool1d\) has ceil_mode=True"),
        (nn.Sequential(nn.Unflatten(1, (1, 3)), nn.AvgPool1d(2, padding=1, count_include_pad=False)), ValueError, "count_include_pad=False"),
        (nn.Sequential(), ValueError, "empty"),
    ],
    ids=["not-sequential", "nested-batchnorm", "softmax", "prelu", "return-indices", "avg-ceil", "avg-count-pad", "empty"],
)
def test_unsupported_modules_are_named(model, error, match) -> None:
    x, y = _x_y()
    with pytest.raises(error, match=match):
        hessian_diagonal(model, nn.CrossEntropyLoss(), x, y, method="bl89")


@pytest.mark.parametrize(
    ("loss_fn", "error", "match"),
    [
        (nn.NLLLoss(), TypeError, "loss_fn of type NLLLoss is not supported; expected one of CrossEntropyLoss, MSELoss, BCEWithLogitsLoss"),
        (nn.CrossEntropyLoss(reduction="none"), ValueError, "reduction='none'; expected 'mean' or 'sum'"),
        (nn.CrossEntropyLoss(weight=torch.ones(2)), ValueError, "weight= set"),
        (nn.BCEWithLogitsLoss(pos_weight=torch.ones(2)), ValueError, "pos_weight= set"),
        ("mse", TypeError, "loss_fn of type str"),
    ],
    ids=["nll", "reduction-none", "class-weights", "pos-weight", "string"],
)
def test_unsupported_losses_are_named(loss_fn, error, match) -> None:
    x, y = _x_y()
    with pytest.raises(error, match=match):
        hessian_diagonal(nn.Sequential(nn.Linear(3, 2)), loss_fn, x, y, method="bl89")


def test_other_bad_arguments() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 2))
    x, y = _x_y()
    loss_fn = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"method='hessian': expected one of \['bl89', 'hesscale', 'hesscale_gn'\]"):
        hessian_diagonal(model, loss_fn, x, y, method="hessian")
    with pytest.raises(ValueError, match=r"params: unknown parameter '5.weight'"):
        hessian_diagonal(model, loss_fn, x, y, method="bl89", params=["5.weight"])
    with pytest.raises(TypeError, match="x must be a floating-point torch.Tensor, got a tensor of dtype torch.int64"):
        hessian_diagonal(model, loss_fn, x.long(), y, method="bl89")
    with pytest.raises(TypeError, match="y must be a torch.Tensor, got list"):
        hessian_diagonal(model, loss_fn, x, [0, 1], method="bl89")
    with pytest.raises(TypeError, match="elementwise= expects torch.nn.Module types or instances"):
        hessian_diagonal(model, loss_fn, x, y, method="bl89", elementwise=["tanh"])
    with pytest.raises(ValueError, match="marked elementwise but has parameters"):
        hessian_diagonal(nn.Sequential(nn.Linear(3, 2), nn.PReLU()), loss_fn, x, y, method="bl89", elementwise=[nn.PReLU])
    # a module marked elementwise that is not: caught on the recorded input
    with pytest.raises(ValueError, match="Softmax was treated as elementwise"):
        hessian_diagonal(nn.Sequential(nn.Linear(3, 2), nn.Softmax(dim=1), nn.Linear(2, 2)), loss_fn, x, y, method="bl89", elementwise=[nn.Softmax])
