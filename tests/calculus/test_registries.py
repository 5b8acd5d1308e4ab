"""The quantity, loss and statistic registries: duplicates rejected, unknown names raise ``UnknownNameError``."""

from __future__ import annotations

import dataclasses
import re

import pytest

import tnderiv
from tnderiv.calculus import QUANTITIES, derive, register_quantity
from tnderiv.calculus.losses import LOSSES, get_loss, register_loss
from tnderiv.calculus.stats import STATISTICS, get_statistic, register_statistic
from tnderiv.ir import DuplicateNameError, Expression, UnknownNameError
from tnderiv.layers import Linear
from tnderiv.layers.base import LayerNetwork


def _forward_again(network: LayerNetwork, wrt: str | None) -> Expression:
    return network.forward


def test_quantities_reject_duplicates_unless_replaced() -> None:
    with pytest.raises(DuplicateNameError, match=r"^quantity 'forward' is already registered; pass replace=True"):
        register_quantity("forward")(_forward_again)
    assert QUANTITIES["forward"].build is not _forward_again
    with pytest.raises(ValueError, match=r"wrt='operands': expected one of \['none', 'operand', 'param'\]"):
        register_quantity("test: bad wrt", wrt="operands")  # type: ignore[arg-type]
    network = Linear(3, 2).network({})
    try:
        register_quantity("test: output")(_forward_again)
        derive(network, "test: output")
        assert derive.cache_info().currsize > 0
        register_quantity("test: output", replace=True)(_forward_again)  # a replacement drops stale derivations
        assert derive.cache_info().currsize == 0
    finally:
        del QUANTITIES["test: output"]


def test_unknown_quantity_names_the_registry_value_and_choices() -> None:
    network = Linear(3, 2).network({})
    with pytest.raises(UnknownNameError, match=r"^unknown quantity 'hessian' \(with _<operand> where needed\); valid quantities are \['batch_dot'") as info:
        derive(network, "hessian")
    assert isinstance(info.value, ValueError) and info.value.valid == sorted(QUANTITIES)


def test_losses_reject_duplicates_and_name_unknown_losses() -> None:
    with pytest.raises(DuplicateNameError, match=r"^loss 'mse' is already registered"):
        register_loss(LOSSES["mse"])
    register_loss(LOSSES["mse"], replace=True)  # the same loss again, explicitly
    message = "unknown loss 'nll'; valid losses are ['bce_with_logits', 'cross_entropy', 'mse']"
    with pytest.raises(UnknownNameError, match=re.escape(message)):
        get_loss("nll")
    dummy = dataclasses.replace(LOSSES["mse"], name="test: loss")
    try:
        register_loss(dummy)
        assert get_loss("test: loss") is dummy
    finally:
        del LOSSES["test: loss"]


def test_statistics_reject_duplicates_and_name_unknown_statistics() -> None:
    with pytest.raises(DuplicateNameError, match=r"^statistic 'variance' is already registered"):
        register_statistic("variance", per_param_shape=True)(STATISTICS["variance"].build)
    for bad in ("mean", 3, ["variance"]):
        with pytest.raises(UnknownNameError, match=rf"^unknown statistic {re.escape(repr(bad))}; valid statistics are \['batch_dot'"):
            get_statistic(bad)
    assert "variance" in tnderiv.QUANTITIES  # a statistic is also a quantity
