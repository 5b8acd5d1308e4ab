"""Named, recorded rewrite rules and the driver that runs them to a fixed point."""

from tnderiv.simplify import delta as _delta  # noqa: F401  (registers its rules)
from tnderiv.simplify.driver import Derivation, Step, simplify, tidy_names
from tnderiv.simplify.rule import RULES, Rule, get_rule, rule

__all__ = ["RULES", "Derivation", "Rule", "Step", "get_rule", "rule", "simplify", "tidy_names"]
