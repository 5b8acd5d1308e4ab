"""Reused plans with other shapes, complex dtypes, explicit paths: clear errors before any work."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import tnderiv
from tnderiv.plan.optimizers import NAMES

F64 = torch.float64
REFLECT = tnderiv.Conv(2, 3, 3, dims=1, padding=1, padding_mode="reflect", bias=False)


def t(*shape: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype)


def raises(kind: type[Exception], *words: str):
    return pytest.raises(kind, match="(?s)" + "".join(f"(?=.*{re.escape(w)})" for w in words))


# ----- item 2: a plan checks what it is given ---------------------------------------------------------
@pytest.fixture(scope="module")
def reflect_plan() -> tnderiv.Plan:
    return tnderiv.plan(REFLECT, {"x": (2, 2, 8), "weight": (3, 2, 3)}, quantity="forward", dtype=F64)


@pytest.mark.parametrize(
    "name, shape",
    [("x", (2, 2, 12)), ("x", (2, 2, 4)), ("x", (3, 2, 8)), ("x", (2, 2, 8, 1)), ("weight", (2, 2, 3)), ("weight", (3, 2, 5))],
)
def test_plan_refuses_other_shapes(reflect_plan, name, shape):
    operands = {"x": t(2, 2, 8), "weight": t(3, 2, 3)}
    operands[name] = t(*shape)
    with raises(ValueError, name, str(shape), "made for", str(reflect_plan.shapes[name])):
        reflect_plan(**operands)


def test_plan_runs_the_shapes_it_was_made_for(reflect_plan):
    x, w = t(2, 2, 8), t(3, 2, 3)
    expected = torch.nn.functional.conv1d(torch.nn.functional.pad(x, (1, 1), mode="reflect"), w)
    torch.testing.assert_close(reflect_plan(x=x, weight=w), expected)


def test_plan_refuses_other_dtype_and_device(reflect_plan):
    with raises(TypeError, "x", "float32", "made for", "float64"):
        reflect_plan(x=t(2, 2, 8, dtype=torch.float32), weight=t(3, 2, 3))
    with raises(ValueError, "missing operands", "weight"):
        reflect_plan(x=t(2, 2, 8))
    with raises(TypeError, "weight", "list"):
        reflect_plan(x=t(2, 2, 8), weight=[1.0])


# ----- item 3: complex dtypes are refused by name -------------------------------------------------------
@pytest.mark.parametrize(
    "call",
    [
        lambda: tnderiv.forward(REFLECT, t(2, 2, 8, dtype=torch.complex128), t(3, 2, 3, dtype=torch.complex128)),
        lambda: tnderiv.vjp(REFLECT, "x", t(2, 3, 8, dtype=torch.complex128), weight=t(3, 2, 3, dtype=torch.complex128), x_shape=(2, 2, 8)),
        lambda: tnderiv.per_sample_grad(REFLECT, t(2, 2, 8, dtype=torch.complex64), t(2, 3, 8, dtype=torch.complex64)),
        lambda: tnderiv.kfac(torch.nn.Linear(3, 2), t(4, 3, dtype=torch.complex64), t(4, 2, dtype=torch.complex64)),
        lambda: tnderiv.forward(torch.nn.Linear(3, 2).to(torch.complex64), t(4, 3, dtype=torch.complex64)),
    ],
    ids=["forward", "vjp_x", "per_sample_grad", "kfac", "module"],
)
def test_complex_refused(call):
    with raises(TypeError, "complex", "not supported"):
        call()


def test_complex_refused_by_plan_and_loss():
    with raises(TypeError, "dtype=torch.complex64", "complex dtypes are not supported"):
        tnderiv.plan(REFLECT, {"x": (2, 2, 8), "weight": (3, 2, 3)}, quantity="forward", dtype=torch.complex64)
    with raises(TypeError, "output", "complex", "not supported"):
        tnderiv.loss_hessian_sqrt("mse", t(2, 3, dtype=torch.complex64), t(2, 3, dtype=torch.complex64))


# ----- item 7: explicit paths ----------------------------------------------------------------------------
SPEC = tnderiv.Conv(2, 3, 3, bias=False)
X, W = t(2, 2, 6, 6), t(3, 2, 3, 3)


@pytest.mark.parametrize(
    "path, words",
    [
        ([(0, 1)], ("optimize=[(0, 1)]", "4 tensors", "3 are left", "into one")),
        ([(0, 9)], ("optimize=[(0, 9)]", "step 0", "position 9", "only 4 tensors")),
        ([(0, 1), (0, 1), (0, 1), (0, 1)], ("step 3", "only 1 tensors")),
        ([(0, 0)], ("step 0", "repeats a position")),
        ([("a",)], ("step 0", "int positions")),
        ([3], ("step 0 is 3", "tuple of tensor positions")),
        ([()], ("step 0 is ()", "non-empty")),
    ],
    ids=["too-short", "out-of-range", "too-long", "repeated", "not-int", "not-a-step", "empty-step"],
)
def test_explicit_path_is_validated(path, words):
    with raises(ValueError, *words):
        tnderiv.forward(SPEC, X, W, optimize=path, simplify=False)


def test_valid_explicit_paths_agree_with_torch():
    expected = torch.nn.functional.conv2d(X, W)
    for path in ([(0, 1), (0, 1), (0, 1)], [(0, 1, 2, 3)], [(np.int64(2), np.int64(3)), (0, 2), (0, 1)]):
        torch.testing.assert_close(tnderiv.forward(SPEC, X, W, optimize=path, simplify=False), expected)


def test_optimizer_names_do_not_repeat():
    assert len(NAMES) == len(set(NAMES)) and NAMES[0] == "auto"
    with pytest.raises(ValueError) as info:
        tnderiv.forward(SPEC, X, W, optimize="nope")
    assert str(info.value).count("'auto'") == 1


def test_explicit_path_on_a_sum_of_diagrams_says_to_plan_each_term():
    """A path orders one network's tensors; a layer-norm VJP is a sum of three (was a bare IndexError)."""
    import torch

    import tnderiv

    expr = tnderiv.diagram(torch.nn.LayerNorm(4), "vjp_x", shapes={"x": (2, 4)})
    shapes = {"grad_out": (2, 4), "inv_std": (2,), "weight": (4,), "x_hat": (2, 4)}
    with pytest.raises(ValueError, match="sum of 3 diagrams; plan each term with its own path"):
        tnderiv.plan(expr, shapes, optimize=[(0, 1), (0, 1)])
