"""String options of layers are ``Literal`` types in the signature, in step with the values they accept."""

from __future__ import annotations

import typing

import pytest

import tnderiv
from tnderiv.ir import PaddingMode, PaddingModeName
from tnderiv.layers.conv import Conv
from tnderiv.layers.geometry import PADDING_NAMES


def _literals(annotation: object) -> set[str]:
    found: set[str] = set()
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is typing.Literal:
            found |= set(typing.get_args(arg))
    return found


def test_conv_signature_lists_the_accepted_words() -> None:
    hints = typing.get_type_hints(Conv)
    assert _literals(hints["padding_mode"]) == {m.value for m in PaddingMode} == set(typing.get_args(PaddingModeName))
    assert _literals(hints["padding"]) == set(PADDING_NAMES) == {"same", "valid"}


@pytest.mark.parametrize("mode", [m.value for m in PaddingMode])
def test_every_padding_mode_word_and_enum_give_one_spec(mode: str) -> None:
    assert Conv(2, 2, 3, padding=1, padding_mode=mode) == Conv(2, 2, 3, padding=1, padding_mode=PaddingMode(mode))


def test_bad_words_name_the_argument_value_and_choices() -> None:
    with pytest.raises(ValueError, match=r"padding_mode='mirror' is not supported; expected one of 'zeros', 'reflect'"):
        tnderiv.Conv(2, 2, 3, padding_mode="mirror")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"padding='full': expected an int, a tuple, per-side pairs, or one of \['same', 'valid'\]"):
        tnderiv.Conv(2, 2, 3, padding="full")  # type: ignore[arg-type]
    assert Conv(2, 2, 3, padding="same").padding == ((1, 1), (1, 1))
    assert Conv(2, 2, 3, padding="valid").padding == ((0, 0), (0, 0))
