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
    _curvature(net, x, layers, inputs, outputs, grads_out, errors, print_fn)
    spec = tnderiv.layers.spec_of(layers[1])
    shapes = {"x": tuple(inputs[1].shape), "grad_out": tuple(grads_out[1].shape)}
    print_fn("\nThe plan tnderiv ran for the weight VJP of layer [1]:")
    print_fn(str(tnderiv.plan(spec, shapes, quantity="vjp_weight", dtype=torch.float64)))
    print_fn("\nIts diagram: " + str(tnderiv.diagram(spec, "vjp_weight")))
    worst = max(errors.values())
    print_fn(f"\nlargest deviation from torch.autograd over all quantities: {worst:.2e}")
    return errors


def _curvature(
    net: nn.Module,
    x: torch.Tensor,
    layers: list[nn.Module],
    inputs: list[torch.Tensor],
    outputs: list[torch.Tensor],
    grads_out: tuple[torch.Tensor, ...],
    errors: dict[str, float],
    print_fn: Callable[[str], None],
) -> None:
    """KFAC factors, the GGN diagonal (exact loss-Hessian square root) and batch statistics per layer."""
    logits = outputs[-1]
    target = torch.randint(0, logits.shape[1], (logits.shape[0],), generator=torch.Generator().manual_seed(1))
    sqrt_logits = tnderiv.loss_hessian_sqrt("cross_entropy", logits.detach(), target)  # [M, N, classes]
    # backpropagate the square root's columns through the network to every layer's output
    sqrt_outs = _backpropagated_sqrt(logits, outputs, sqrt_logits)
    print_fn("\nCurvature (cross-entropy, exact loss-Hessian square root with M = 10 columns):")
    for index, (layer, x_in, g_out, s_out) in enumerate(zip(layers, inputs, grads_out, sqrt_outs)):
        x_in = x_in.detach()
        kfac = tnderiv.kfac(layer, x_in, s_out, approx="reduce")
        diag = tnderiv.ggn(layer, x_in, s_out, param="weight", kind="diag")
        stats = tnderiv.grad_stats(layer, x_in, g_out, ("sum_grad_squared", "batch_l2"))
        oracle = _ggn_diag_by_autograd(layer, x_in, s_out)
        err = _max_err(diag, oracle)
        errors["ggn_diag"] = max(errors.get("ggn_diag", 0.0), err)
        warm = _time_ms(lambda layer=layer, x_in=x_in, s_out=s_out: tnderiv.kfac(layer, x_in, s_out, approx="reduce"))
        print_fn(
            f"[{index}] KFAC-reduce A {tuple(kfac.A.shape)} G {tuple(kfac.G.shape)} ({warm:.2f} ms warm); "
            f"GGN diagonal {tuple(diag.shape)} err {err:.1e}; "
            f"sum_grad_squared {tuple(stats['sum_grad_squared']['weight'].shape)}, batch_l2 {tuple(stats['batch_l2']['weight'].shape)} "
            f"({stats.choices['batch_l2']['weight'].strategy})"
        )


def _backpropagated_sqrt(
    logits: torch.Tensor, outputs: list[torch.Tensor], sqrt_logits: torch.Tensor
) -> list[torch.Tensor]:
    """``S_l[m] = J_{logits→y_l}ᵀ S[m]`` for every layer output ``y_l``: ``[M, *y_l.shape]`` each."""
    columns = [torch.autograd.grad(logits, outputs, column, retain_graph=True) for column in sqrt_logits]
    return [torch.stack([col[layer] for col in columns]) for layer in range(len(outputs))]


def _ggn_diag_by_autograd(layer: nn.Module, x: torch.Tensor, sqrt_out: torch.Tensor) -> torch.Tensor:
    """Oracle: ``Σ_m Σ_n (per-sample VJP of column m w.r.t. the weight)²`` with torch.func."""

    def output(weight: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, {"weight": weight}, (sample[None],))[0]

    def per_sample_vjp(sample: torch.Tensor, cotangent: torch.Tensor) -> torch.Tensor:
        return torch.func.vjp(lambda w: output(w, sample), layer.weight)[1](cotangent)[0]

    return sum((torch.func.vmap(per_sample_vjp)(x, column) ** 2).sum(0) for column in sqrt_out)
