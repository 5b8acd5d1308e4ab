"""Graph surgery and the quantities derived with it."""

from tnderiv.calculus import hadamard as _hadamard  # noqa: F401  (registers hadamard_vjp)
from tnderiv.calculus.glue import glue, sum_legs
from tnderiv.calculus.quantities import QUANTITIES, QuantityKind, derive, parse_quantity, register_quantity
from tnderiv.calculus.surgery import derivative, jvp, vjp

__all__ = ["QUANTITIES", "QuantityKind", "derivative", "derive", "glue", "jvp", "parse_quantity", "register_quantity", "sum_legs", "vjp"]
