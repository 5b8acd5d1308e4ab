"""Named, recorded rewrite rules (one module per family) and the driver that runs them to a fixed point.

Rules run by priority: copy tensors first, then patterns, legs, constant folding (``rule.ordered_rules``).
"""

from tnderiv.simplify import delta as _delta  # noqa: F401  (registers its rules)
from tnderiv.simplify import folding as _folding  # noqa: F401
from tnderiv.simplify import legs as _legs  # noqa: F401
from tnderiv.simplify import patterns as _patterns  # noqa: F401
from tnderiv.simplify.check import RewriteCheckError, check_rewrites, checking
from tnderiv.simplify.driver import Derivation, Step, simplify, tidy_names
from tnderiv.simplify.rule import RULES, STAGES, Rule, Stage, get_rule, rule

__all__ = [
    "RULES",
    "STAGES",
    "Derivation",
    "RewriteCheckError",
    "Rule",
    "Stage",
    "Step",
    "check_rewrites",
    "checking",
    "get_rule",
    "rule",
    "simplify",
    "tidy_names",
]
