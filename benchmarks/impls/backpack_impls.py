"""BackPACK (Dangel et al. 2020): per-sample gradients, batch statistics, KFAC/KFLR and the exact diagonal GGN.

BackPACK works on a model and a backward pass, so its time includes one forward and one backward of
the layer (with its hooks); the model is a deep copy so that its hooks never slow down the others.
"""

from __future__ import annotations

import copy
import math

import torch

from benchmarks.impls import Prepared, Unsupported, implementation
from benchmarks.problem import Problem

KFLR_BUDGET_BYTES = 2**30  # KFLR backpropagates one column per output entry: [D, N, D]


def _first_order(extension_name: str, attribute: str, p: Problem, transform=None) -> Prepared:
    import backpack
    import backpack.extensions as ext

    model = backpack.extend(copy.deepcopy(p.module))
    extension = getattr(ext, extension_name)
    x, g = p.x, p.grad_out

    def call() -> torch.Tensor:
        with backpack.backpack(extension()):
            (model(x) * g).sum().backward()
        result = getattr(model.weight, attribute)
        model.weight.grad = None
        return result

    return Prepared(call, extract=transform or (lambda r: r), note="includes one forward + backward")


@implementation("per_sample_grad", "backpack", requires="backpack")
def per_sample(p: Problem) -> Prepared:
    return _first_order("BatchGrad", "grad_batch", p)


@implementation("sum_grad_squared", "backpack", requires="backpack")
def sum_grad_squared(p: Problem) -> Prepared:
    return _first_order("SumGradSquared", "sum_grad_squared", p)


@implementation("batch_l2", "backpack", requires="backpack")
def batch_l2(p: Problem) -> Prepared:
    return _first_order("BatchL2Grad", "batch_l2", p)


def _kron(p: Problem, extension: str) -> Prepared:
    import backpack
    import backpack.extensions as ext

    if extension == "KFLR":
        columns = math.prod(p.out_shape[1:])
        need = columns * columns * p.x.shape[0] * p.x.element_size()
        if need > KFLR_BUDGET_BYTES:
            raise Unsupported(
                f"skipped: KFLR backpropagates one column per output entry ([{columns}, N, {columns}], {need / 2**30:.1f} GiB)"
            )
    model = backpack.extend(torch.nn.Sequential(copy.deepcopy(p.module), torch.nn.Flatten()))
    loss_fn = backpack.extend(torch.nn.MSELoss(reduction="sum"))
    x, target = p.x, p.mse_target
    make = getattr(ext, extension)
    attribute = extension.lower()
    n = x.shape[0]

    def call() -> list[torch.Tensor]:
        with backpack.backpack(make() if extension == "KFLR" else make(mc_samples=1)):
            loss_fn(model(x), target).backward()
        result = getattr(model[0].weight, attribute)
        model[0].weight.grad = None
        return result

    def extract(factors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        # BackPACK returns [G, A] with A divided by the batch size; its G is the MC/exact GGN factor
        a = factors[-1] * n
        return {"A": a.unsqueeze(0) if a.dim() == 2 else a}

    note = "A checked (BackPACK divides by N); G is " + (
        "the exact MSE-GGN factor" if extension == "KFLR" else "a Monte-Carlo sample"
    ) + ", not comparable to the grad_out factor; includes forward + backward"
    return Prepared(call, extract=extract, note=note)


@implementation("kfac_expand", "backpack-kfac", requires="backpack")
def kfac(p: Problem) -> Prepared:
    return _kron(p, "KFAC")


@implementation("kfac_expand", "backpack-kflr", requires="backpack")
def kflr(p: Problem) -> Prepared:
    return _kron(p, "KFLR")


@implementation("diag_ggn", "backpack", requires="backpack")
def diag_ggn(p: Problem) -> Prepared:
    import backpack
    from backpack.extensions import DiagGGNExact

    model = backpack.extend(torch.nn.Sequential(copy.deepcopy(p.module), torch.nn.Flatten(), copy.deepcopy(p.head)))
    loss_fn = backpack.extend(torch.nn.MSELoss(reduction="sum"))
    x = p.x
    target = torch.zeros(x.shape[0], p.head.out_features, dtype=x.dtype, device=x.device)

    def call() -> torch.Tensor:
        with backpack.backpack(DiagGGNExact()):
            loss_fn(model(x), target).backward()
        result = model[0].weight.diag_ggn_exact
        model[0].weight.grad = None
        return result

    return Prepared(call, note="model = layer → flatten → linear head, MSE; includes forward + backward")
