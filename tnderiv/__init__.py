"""tnderiv: neural-network layers as tensor-network diagrams, and everything derived from them."""

from tnderiv.api import diagram, evaluate, forward, jvp, per_sample_grad, plan, vjp
from tnderiv.calculus import QUANTITIES
from tnderiv.ir import Diagram, DiagramSum
from tnderiv.layers import Conv, DiagramLayer, Linear
from tnderiv.plan import PLAN_CACHE, Plan
from tnderiv.simplify import simplify

__version__ = "0.1.0"

__all__ = [
    "PLAN_CACHE",
    "QUANTITIES",
    "Conv",
    "Diagram",
    "DiagramLayer",
    "DiagramSum",
    "Linear",
    "Plan",
    "__version__",
    "diagram",
    "evaluate",
    "forward",
    "jvp",
    "per_sample_grad",
    "plan",
    "simplify",
    "vjp",
]
