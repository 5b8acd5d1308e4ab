"""Lowering diagrams to einsum, choosing contraction orders, compiled and cached plans, backends."""

from tnderiv.plan.bind import OUTPUT, bind_sizes
from tnderiv.plan.compiled import PLAN_CACHE, Plan, PlanStep, get_plan

__all__ = ["OUTPUT", "PLAN_CACHE", "Plan", "PlanStep", "bind_sizes", "get_plan"]
