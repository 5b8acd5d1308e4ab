"""torch itself: its convolution and autograd, ``torch.func.vmap(grad)``, and unfold + einsum (opacus-style, KFAC)."""

from __future__ import annotations

import torch
from torch.func import functional_call, grad, vmap

from benchmarks import unfold
from benchmarks.impls import Prepared, implementation
from benchmarks.problem import Problem


@implementation("forward", "torch")
def forward(p: Problem) -> Prepared:
    module, x = p.module, p.x

    def call() -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return Prepared(call)


@implementation("vjp_x", "torch")
def vjp_x(p: Problem) -> Prepared:
    x = p.x.detach().requires_grad_(True)
    y = p.module(x)
    g = p.grad_out
    return Prepared(lambda: torch.autograd.grad(y, x, g, retain_graph=True)[0], note="autograd backward on a retained graph")


@implementation("vjp_weight", "torch")
def vjp_weight(p: Problem) -> Prepared:
    y = p.module(p.x)
    w, g = p.module.weight, p.grad_out
    return Prepared(lambda: torch.autograd.grad(y, w, g, retain_graph=True)[0], note="autograd backward on a retained graph")


@implementation("vjp_weight", "unfold")
def vjp_weight_unfold(p: Problem) -> Prepared:
    module, x, g = p.module, p.x, p.grad_out
    return Prepared(lambda: unfold.weight_vjp(module, x, g))


@implementation("per_sample_grad", "vmap")
def per_sample_vmap(p: Problem) -> Prepared:
    module = p.module
    others = {k: v.detach() for k, v in module.named_parameters() if k != "weight"}
    weight = module.weight.detach()

    def loss(w: torch.Tensor, xn: torch.Tensor, gn: torch.Tensor) -> torch.Tensor:
        y = functional_call(module, {**others, "weight": w}, (xn.unsqueeze(0),))
        return (y * gn.unsqueeze(0)).sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    x, g = p.x, p.grad_out
    return Prepared(lambda: per_sample(weight, x, g), note="torch.func.vmap(grad)")


@implementation("per_sample_grad", "unfold")
def per_sample_unfold(p: Problem) -> Prepared:
    module, x, g = p.module, p.x, p.grad_out
    return Prepared(lambda: unfold.per_sample_grad(module, x, g), note="unfold + einsum (the opacus approach)")


def _kfac_A(approx: str):
    def setup(p: Problem) -> Prepared:
        module, x = p.module, p.x
        return Prepared(lambda: unfold.kfac_input(module, x, approx))

    return setup


def _kfac_both(approx: str):
    def setup(p: Problem) -> Prepared:
        module, x, g = p.module, p.x, p.grad_out
        return Prepared(lambda: {"A": unfold.kfac_input(module, x, approx), "G": unfold.kfac_output(module, g, approx)})

    return setup


for _approx in ("expand", "reduce"):
    implementation(f"kfac_A_{_approx}", "unfold")(_kfac_A(_approx))
    implementation(f"kfac_{_approx}", "unfold")(_kfac_both(_approx))


@implementation("sum_grad_squared", "unfold")
def sum_grad_squared(p: Problem) -> Prepared:
    module, x, g = p.module, p.x, p.grad_out
    return Prepared(lambda: unfold.per_sample_grad(module, x, g).square().sum(0), note="materializes per-sample gradients")


@implementation("batch_l2", "unfold")
def batch_l2(p: Problem) -> Prepared:
    module, x, g = p.module, p.x, p.grad_out
    return Prepared(
        lambda: unfold.per_sample_grad(module, x, g).square().flatten(1).sum(1), note="materializes per-sample gradients"
    )


@implementation("diag_ggn", "unfold")
def diag_ggn(p: Problem) -> Prepared:
    module, x, s = p.module, p.x, p.sqrt_out
    return Prepared(lambda: unfold.diag_ggn(module, x, s), note="per-sample gradients per column of the square root")
