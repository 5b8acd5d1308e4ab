"""Whole models: every quantity for every layer of a torch model from one forward and backward."""

from tnderiv.model.curvature import Curvature
from tnderiv.model.reduce import ExactCurvature
from tnderiv.model.result import CurvatureResult

__all__ = ["Curvature", "CurvatureResult", "ExactCurvature"]
