"""einconv (Dangel 2023): convolutions and their derivatives as einsum expressions built per call.

einconv has no ``padding_mode`` (reflect/circular/replicate are silently treated as zeros) and no
transposed convolutions; both are visible in the correctness table. Each call builds the index
patterns and the expression, then runs ``torch.einsum`` — the way einconv's API is used.
"""

from __future__ import annotations

import math

import torch

from benchmarks.impls import Prepared, Unsupported, implementation, is_conv
from benchmarks.problem import Problem


def _hyper(p: Problem) -> dict:
    m = p.module
    if m.transposed:
        raise Unsupported("einconv has no transposed convolution")
    return dict(stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups)


@implementation("forward", "einconv", requires="einconv", applies=is_conv)
def forward(p: Problem) -> Prepared:
    from einconv.functionals import convNd

    hyper, m, x = _hyper(p), p.module, p.x
    w, b = m.weight.detach(), None if m.bias is None else m.bias.detach()
    return Prepared(lambda: convNd(x, w, b, **hyper))


@implementation("vjp_x", "einconv", requires="einconv", applies=is_conv)
def vjp_x(p: Problem) -> Prepared:
    from einconv.expressions import convNd_input_vjp

    hyper, w, g = _hyper(p), p.module.weight.detach(), p.grad_out
    size = tuple(p.x.shape[2:])

    def call() -> torch.Tensor:
        equation, operands, shape = convNd_input_vjp.einsum_expression(w, g, size, **hyper)
        return torch.einsum(equation, *operands).reshape(shape)

    return Prepared(call)


@implementation("vjp_weight", "einconv", requires="einconv", applies=is_conv)
def vjp_weight(p: Problem) -> Prepared:
    from einconv.expressions import convNd_weight_vjp

    hyper, x, g = _hyper(p), p.x, p.grad_out
    kernel = tuple(p.module.kernel_size)

    def call() -> torch.Tensor:
        equation, operands, shape = convNd_weight_vjp.einsum_expression(x, g, kernel, **hyper)
        return torch.einsum(equation, *operands).reshape(shape)

    return Prepared(call)


def _kfac_A(approx: str):
    def setup(p: Problem) -> Prepared:
        from einconv.expressions import convNd_kfac_reduce, convNd_kfc

        build = convNd_kfc.einsum_expression if approx == "expand" else convNd_kfac_reduce.einsum_expression
        hyper, x = _hyper(p), p.x
        kernel = tuple(p.module.kernel_size)
        positions = math.prod(p.out_shape[2:])
        # einconv scales KFC by 1/N and KFAC-reduce by 1/(N·L²); the canonical factors are sums
        scale = x.shape[0] * (1 if approx == "expand" else positions**2)

        def call() -> torch.Tensor:
            equation, operands, shape = build(x, kernel, **hyper)
            return torch.einsum(equation, *operands).reshape(shape)

        return Prepared(call, extract=lambda a: a * scale, note=f"einconv scale ×{scale} to sums")

    return setup


for _approx in ("expand", "reduce"):
    implementation(f"kfac_A_{_approx}", "einconv", requires="einconv", applies=is_conv)(_kfac_A(_approx))
