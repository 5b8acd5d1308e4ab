"""``tnderiv demo``: a small CNN on random data; every quantity checked against torch.autograd, with plans and timings."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import tnderiv


def demo_network() -> nn.Sequential:
    """A small CNN exercising padding modes, stride, groups, a transposed conv and a dense layer."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding="same", padding_mode="reflect"),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),  # depthwise
        nn.ReLU(),
        nn.ConvTranspose2d(16, 8, 2, stride=2),
        nn.Flatten(),
        nn.Linear(8 * 16 * 16, 10),
    )


def _time_ms(fn: Callable[[], Any], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def run_demo(batch: int = 8, print_fn: Callable[[str], None] = print) -> dict[str, float]:
    """Run the demo; returns the largest deviation from torch.autograd per quantity (float64)."""
    net = demo_network().double()
    x = torch.randn(batch, 3, 16, 16, dtype=torch.float64)
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []

    def record(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        inputs.append(args[0])
        outputs.append(out)

    layers = [m for m in net if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    hooks = [m.register_forward_hook(record) for m in layers]
    loss = nn.functional.cross_entropy(net(x), torch.randint(0, 10, (batch,)))
    for h in hooks:
        h.remove()
    grads_out = torch.autograd.grad(loss, outputs, retain_graph=True)
    errors: dict[str, float] = {}
    print_fn(f"tnderiv {tnderiv.__version__} demo: {len(layers)} layers, batch {batch}, float64, checked against torch.autograd\n")
    for index, (layer, x_in, g_out) in enumerate(zip(layers, inputs, grads_out)):
        spec = tnderiv.layers.spec_of(layer)
        x_in = x_in.detach()
        x_req = x_in.clone().requires_grad_(True)
        y = layer(x_req)
        ref_x, ref_w, ref_b = torch.autograd.grad(y, (x_req, layer.weight, layer.bias), g_out)
        got = {
            "forward": _max_err(tnderiv.forward(layer, x_in), y.detach()),
            "vjp_x": _max_err(tnderiv.vjp(layer, "x", g_out, x_shape=x_in.shape), ref_x),
            "vjp_weight": _max_err(tnderiv.vjp(layer, "weight", g_out, x=x_in), ref_w),
            "vjp_bias": _max_err(tnderiv.vjp(layer, "bias", g_out), ref_b),
        }
        psg = tnderiv.per_sample_grad(layer, x_in, g_out)
        got["per_sample_grad"] = max(_max_err(psg["weight"].sum(0), ref_w), _max_err(psg["bias"].sum(0), ref_b))
        for name, err in got.items():
            errors[name] = max(errors.get(name, 0.0), err)
        print_fn(f"[{index}] {spec}")
        print_fn("    " + "  ".join(f"{name}: err {err:.1e}" for name, err in got.items()))
        cold_start = time.perf_counter()
        tnderiv.clear_caches()
        tnderiv.per_sample_grad(layer, x_in, g_out)
        cold = 1e3 * (time.perf_counter() - cold_start)
        warm = _time_ms(lambda layer=layer, x_in=x_in, g_out=g_out: tnderiv.per_sample_grad(layer, x_in, g_out))
        print_fn(f"    per-sample gradients: cold {cold:.1f} ms (derive + plan + run), warm {warm:.2f} ms")
    _curvature(net, x, errors, print_fn)
    spec = tnderiv.layers.spec_of(layers[1])
    shapes = {"x": tuple(inputs[1].shape), "grad_out": tuple(grads_out[1].shape)}
    print_fn("\nThe plan tnderiv ran for the weight VJP of layer [1]:")
    print_fn(str(tnderiv.plan(spec, shapes, quantity="vjp_weight", dtype=torch.float64)))
    print_fn("\nIts diagram: " + str(tnderiv.diagram(spec, "vjp_weight")))
    worst = max(errors.values())
    print_fn(f"\nlargest deviation from torch.autograd over all quantities: {worst:.2e}")
    return errors


def _curvature(net: nn.Module, x: torch.Tensor, errors: dict[str, float], print_fn: Callable[[str], None]) -> None:
    """The whole model at once (``tnderiv.Curvature``): per-sample gradients, statistics, KFAC and the exact GGN
    diagonal of every layer from one forward and backward, checked against ``torch.func``."""
    target = torch.randint(0, 10, (x.shape[0],), generator=torch.Generator().manual_seed(1))
    curv = tnderiv.Curvature(net, nn.CrossEntropyLoss(), fisher="type-2", approx="reduce")
    quantities = ("per_sample_grad", "sum_grad_squared", "batch_l2", "kfac", "ggn_diag")
    start = time.perf_counter()
    res = curv.compute(x, target, quantities, set_grad=False)
    cold = 1e3 * (time.perf_counter() - start)
    warm = _time_ms(lambda: curv.compute(x, target, quantities, set_grad=False), repeats=3)
    params = {name: p.detach() for name, p in net.named_parameters()}
    psg_ref = _per_sample_grads_by_torch_func(net, params, x, target)
    diag_ref = _ggn_diag_by_torch_func(net, params, x)
    psg_err = diag_err = 0.0
    for name in params:
        module, _, local = name.rpartition(".")
        psg_err = max(psg_err, _max_err(res[module]["per_sample_grad"][local], psg_ref[name]))
        diag_err = max(diag_err, _max_err(res[module]["ggn_diag"][local], diag_ref[name]))
    errors["model_per_sample_grad"], errors["ggn_diag"] = psg_err, diag_err
    print_fn("\nThe whole model at once: tnderiv.Curvature(net, nn.CrossEntropyLoss()).compute(x, y, quantities)")
    print_fn(res.report())
    print_fn(
        f"per-sample gradients err {psg_err:.1e}, exact GGN diagonal err {diag_err:.1e} (vs torch.func); "
        f"first call {cold:.0f} ms (derive + plan every layer), warm {warm:.1f} ms"
    )


def _per_sample_grads_by_torch_func(net: nn.Module, params: dict[str, Any], x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Oracle: ``vmap(grad)`` of each sample's share of the mean cross-entropy."""

    def loss(p: dict[str, Any], xn: torch.Tensor, yn: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(net, p, (xn[None],))
        return nn.functional.cross_entropy(out, yn[None], reduction="sum") / x.shape[0]

    return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)


def _ggn_diag_by_torch_func(net: nn.Module, params: dict[str, Any], x: torch.Tensor) -> dict[str, Any]:
    """Oracle: ``diag(Σ_n J_nᵀ H_n J_n)`` from the dense Jacobian and the mean cross-entropy's Hessian."""
    out = net(x).detach()
    n = x.shape[0]
    jac = torch.func.jacrev(lambda p: torch.func.functional_call(net, p, (x,)))(params)
    p = torch.softmax(out, 1)
    hessian = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]) / n  # [N, C, C]
    result = {}
    for name, j in jac.items():
        j = j.reshape(n, out.shape[1], -1)  # [N, C, P]
        result[name] = ((hessian @ j) * j).sum((0, 1)).reshape(params[name].shape)
    return result
