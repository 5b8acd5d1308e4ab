"""tnderiv: neural-network layers as tensor-network diagrams, and everything derived from them."""

import importlib

from tnderiv.api import clear_caches, diagram, evaluate, forward, jvp, per_sample_grad, plan, vjp
from tnderiv.api_ggn import GradStats, ggn, grad_stats, loss_hessian_sqrt
from tnderiv.api_kfac import KFAC, kfac, kfac_factors_input, kfac_factors_output
from tnderiv.api_structured import StructuredGram, mode_gram, mode_product, structured_gram
from tnderiv.calculus import QUANTITIES
from tnderiv.explore import explore
from tnderiv.ir import Diagram, DiagramSum
from tnderiv.ir.drawing import set_provider
from tnderiv.layers import BatchNorm, Conv, DiagramLayer, GroupNorm, InstanceNorm, LayerNorm, Linear, RMSNorm
from tnderiv.model import Curvature, CurvatureResult, ExactCurvature
from tnderiv.model.memsave import memsave, required_operands
from tnderiv.plan import PLAN_CACHE, Plan
from tnderiv.plan.cache import cache_info
from tnderiv.plan.memory import MemoryBudgetError, get_memory_budget, set_memory_budget
from tnderiv.simplify import simplify

# Diagram.to_svg, .to_tikz, .save: tnderiv.render registers them when one is first called
set_provider(lambda: importlib.import_module("tnderiv.render"))

__version__ = "0.1.0"

__all__ = [
    "PLAN_CACHE",
    "QUANTITIES",
    "BatchNorm",
    "Curvature",
    "CurvatureResult",
    "ExactCurvature",
    "Conv",
    "Diagram",
    "DiagramLayer",
    "DiagramSum",
    "GroupNorm",
    "InstanceNorm",
    "KFAC",
    "LayerNorm",
    "GradStats",
    "Linear",
    "MemoryBudgetError",
    "Plan",
    "RMSNorm",
    "StructuredGram",
    "__version__",
    "cache_info",
    "clear_caches",
    "diagram",
    "evaluate",
    "explore",
    "forward",
    "get_memory_budget",
    "ggn",
    "grad_stats",
    "jvp",
    "kfac",
    "kfac_factors_input",
    "kfac_factors_output",
    "loss_hessian_sqrt",
    "memsave",
    "mode_gram",
    "mode_product",
    "per_sample_grad",
    "plan",
    "set_memory_budget",
    "required_operands",
    "simplify",
    "structured_gram",
    "vjp",
]
