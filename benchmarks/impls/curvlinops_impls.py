"""curvlinops (Dangel et al.): ``KFACLinearOperator`` with the empirical Fisher (deterministic, so checkable).

The model is the layer followed by ``Flatten`` with ``MSELoss(reduction="sum")`` and a target chosen
so that the layer's output gradient is ``grad_out``. Timed: ``compute_kronecker_factors()`` (one
forward and backward pass with curvlinops' hooks).
"""

from __future__ import annotations

import copy
import math

import torch

from benchmarks.impls import Prepared, implementation
from benchmarks.problem import Problem


def _kfac(approx: str):
    def setup(p: Problem) -> Prepared:
        from curvlinops import KFACLinearOperator

        model = torch.nn.Sequential(copy.deepcopy(p.module), torch.nn.Flatten())
        weight = model[0].weight
        n = p.x.shape[0]
        positions = math.prod(p.out_shape[2:]) if p.case.kind == "conv" else math.prod(p.x.shape[1:-1])
        op = KFACLinearOperator(
            model,
            torch.nn.MSELoss(reduction="sum"),
            [weight],
            [(p.x, p.mse_target)],
            check_deterministic=False,
            fisher_type="empirical",
            kfac_approx=approx,
            num_per_example_loss_terms=1,
            num_data=n,
        )

        def call() -> tuple[torch.Tensor, torch.Tensor]:
            op._input_covariances, op._gradient_covariances = {}, {}
            op.compute_kronecker_factors()
            return op._input_covariances["0"], op._gradient_covariances["0"]

        # curvlinops divides A by N·L (expand) or averages positions and divides by N (reduce)
        a_scale = n * positions if approx == "expand" else n * positions**2

        def extract(factors: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
            a, g = factors
            return {"A": (a * a_scale).unsqueeze(0), "G": g.unsqueeze(0)}

        return Prepared(call, extract=extract, note=f"empirical Fisher; A ×{a_scale} to sums; includes forward + backward")

    return setup


for _approx in ("expand", "reduce"):
    implementation(f"kfac_{_approx}", "curvlinops", requires="curvlinops")(_kfac(_approx))
