"""tnderiv: every quantity from the layer's diagram, through cached compiled plans.

Quantities of the weight alone use the layer's spec without its bias (so that no implementation
pays for a bias block the others skip). A missing public function (a feature not merged yet) is
reported as missing, never worked around.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from benchmarks.impls import Missing, Prepared, implementation
from benchmarks.problem import Problem


def _tnderiv(*names: str) -> Any:
    import tnderiv

    for name in names:
        if not hasattr(tnderiv, name):
            raise Missing(f"tnderiv.{name} does not exist in this checkout")
    return tnderiv


def weight_only_spec(p: Problem) -> Any:
    """The layer's tnderiv spec without its bias."""
    from tnderiv.layers.base import spec_of

    spec = spec_of(p.module)
    return dataclasses.replace(spec, bias=False) if getattr(spec, "bias", False) else spec


def _positions(p: Problem) -> int:
    return math.prod(p.out_shape[2:]) if p.case.kind == "conv" else math.prod(p.x.shape[1:-1])


@implementation("forward", "tnderiv", requires="tnderiv")
def forward(p: Problem) -> Prepared:
    tn = _tnderiv("forward")
    module, x = p.module, p.x
    return Prepared(lambda: tn.forward(module, x))


@implementation("vjp_x", "tnderiv", requires="tnderiv")
def vjp_x(p: Problem) -> Prepared:
    tn = _tnderiv("vjp")
    module, g, shape = p.module, p.grad_out, tuple(p.x.shape)
    return Prepared(lambda: tn.vjp(module, "x", g, x_shape=shape))


@implementation("vjp_weight", "tnderiv", requires="tnderiv")
def vjp_weight(p: Problem) -> Prepared:
    tn = _tnderiv("vjp")
    module, g, x = p.module, p.grad_out, p.x
    return Prepared(lambda: tn.vjp(module, "weight", g, x=x))


@implementation("per_sample_grad", "tnderiv", requires="tnderiv")
def per_sample(p: Problem) -> Prepared:
    tn = _tnderiv("per_sample_grad")
    spec, x, g = weight_only_spec(p), p.x, p.grad_out
    return Prepared(lambda: tn.per_sample_grad(spec, x, g, params=["weight"])["weight"])


def _kfac_A(approx: str):
    def setup(p: Problem) -> Prepared:
        tn = _tnderiv("kfac_factors_input")
        spec, x = weight_only_spec(p), p.x
        # tnderiv averages: expand 1/(N·S), reduce 1/N over position means (docs/conventions.md)
        scale = x.shape[0] * (_positions(p) if approx == "expand" else _positions(p) ** 2)
        return Prepared(lambda: tn.kfac_factors_input(spec, x, approx), extract=lambda a: a * scale,
                        note=f"A ×{scale} to sums")

    return setup


def _kfac_both(approx: str):
    def setup(p: Problem) -> Prepared:
        tn = _tnderiv("kfac")
        spec, x, g = weight_only_spec(p), p.x, p.grad_out
        scale = x.shape[0] * (_positions(p) if approx == "expand" else _positions(p) ** 2)

        def call() -> Any:
            return tn.kfac(spec, x, g, approx=approx, loss_average=None)

        return Prepared(call, extract=lambda k: {"A": k.A * scale, "G": k.G}, note=f"loss_average=None; A ×{scale} to sums")

    return setup


for _approx in ("expand", "reduce"):
    implementation(f"kfac_A_{_approx}", "tnderiv", requires="tnderiv")(_kfac_A(_approx))
    implementation(f"kfac_{_approx}", "tnderiv", requires="tnderiv")(_kfac_both(_approx))


def _stat(stat: str, strategy: str):
    def setup(p: Problem) -> Prepared:
        tn = _tnderiv("grad_stats")
        spec, x, g = weight_only_spec(p), p.x, p.grad_out

        def call() -> Any:
            return tn.grad_stats(spec, x, g, stats=(stat,), params=["weight"], strategy=strategy)

        probe = call()
        chosen = probe.strategy(stat, "weight") if hasattr(probe, "strategy") else strategy
        return Prepared(call, extract=lambda r: r[stat]["weight"], note=f"strategy={strategy} → {chosen}")

    return setup


for _stat_name in ("sum_grad_squared", "batch_l2"):
    implementation(_stat_name, "tnderiv", requires="tnderiv")(_stat(_stat_name, "auto"))
    implementation(_stat_name, "tnderiv-materialize", requires="tnderiv")(_stat(_stat_name, "materialize"))


@implementation("diag_ggn", "tnderiv", requires="tnderiv")
def diag_ggn(p: Problem) -> Prepared:
    tn = _tnderiv("ggn")
    spec, x, s = weight_only_spec(p), p.x, p.sqrt_out
    return Prepared(lambda: tn.ggn(spec, x, s, params="weight", kind="diag"))


# ----- plan facts and call overhead (issue 3's "warm call" and "cold call" targets) ------------------------
PLANNED = {"forward": "forward", "vjp_x": "vjp_x", "vjp_weight": "vjp_weight", "per_sample_grad": "per_sample_grad_weight"}


def plan_for(p: Problem, quantity: str) -> Any:
    """tnderiv's compiled plan of ``quantity`` (one of ``PLANNED``) for this problem's shapes."""
    import tnderiv

    layer = weight_only_spec(p) if quantity == "per_sample_grad" else p.module
    shapes = {"x": tuple(p.x.shape), "weight": tuple(p.module.weight.shape), "grad_out": tuple(p.grad_out.shape)}
    if quantity == "forward":
        shapes.pop("grad_out")
        if p.module.bias is not None:
            shapes["bias"] = tuple(p.module.bias.shape)
    elif quantity == "vjp_x":
        from tnderiv.plan.bind import OUTPUT

        shapes[OUTPUT] = shapes.pop("x")  # strided layers need the input size: it is not implied by grad_out
    else:
        shapes.pop("weight")
    return tnderiv.plan(layer, shapes, quantity=PLANNED[quantity], dtype=p.x.dtype, device=p.x.device)


def plan_facts(p: Problem, quantity: str) -> dict[str, Any]:
    """FLOPs, largest intermediate and kernel kinds of tnderiv's plan (what the planner chose)."""
    plan = plan_for(p, quantity)
    steps = plan.steps()
    return {
        "flops": int(plan.flops),
        "peak_elements": int(plan.peak_size),
        "steps": len(steps),
        "kernels": [getattr(s, "blas", getattr(s, "kernel", "?")) for s in steps],
    }


def direct_call(p: Problem, quantity: str) -> Any:
    """A zero-argument function running the compiled ``Plan`` itself (no spec conversion, derivation, cache look-up or checks)."""
    plan = plan_for(p, quantity)
    operands = {"x": p.x, "weight": p.module.weight.detach(), "grad_out": p.grad_out}
    if p.module.bias is not None:
        operands["bias"] = p.module.bias.detach()
    needed = {name: operands[name] for name in plan.operand_names}
    return lambda: plan.execute(needed)  # the compiled terms without the operand checks a user call gets


IMPL_SETUPS = {"forward": forward, "vjp_x": vjp_x, "vjp_weight": vjp_weight, "per_sample_grad": per_sample}
