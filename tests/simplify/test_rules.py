"""Each rewrite rule: before and after contract to the same values (independent dense oracle), where it fires and where it must not."""

from __future__ import annotations

import pytest
import sympy
from dense_oracle import assert_same_value
from hypothesis import given, settings
from hypothesis import strategies as st

import tnderiv
from tnderiv.calculus import derive
from tnderiv.ir import Diagram, NodeKind, PaddingMode, PatternParams, delta, ones, operand, pattern
from tnderiv.plan.bind import concrete
from tnderiv.simplify import RULES, get_rule, simplify

QUANTITIES = ("forward", "vjp_x", "vjp_weight", "per_sample_grad_weight", "jvp_x")


def fired(expr, stage: str = "derive", rules=None) -> list[str]:
    return [step.rule for step in simplify(expr, trace=True, stage=stage, rules=rules).steps]


def conv_term(quantity: str, *, bindings: dict, **hyper) -> Diagram:
    """The unsimplified first term of a convolution quantity, sizes bound to integers."""
    spec = tnderiv.Conv(hyper.pop("c_in", 2), hyper.pop("c_out", 2), hyper.pop("k"), **hyper)
    expr = derive(spec.network({}), quantity, False)
    term = expr.terms[0] if hasattr(expr, "terms") else expr
    return concrete(term, {sympy.Symbol(k, integer=True, positive=True): v for k, v in bindings.items()})


def rewrite_once(rule: str, diagram: Diagram) -> Diagram | None:
    """Simplify with the copy-tensor rules first, then apply ``rule`` once."""
    base = simplify(diagram, rules=["delta elimination", "ones absorption", "scalar folding"])
    return get_rule(rule).apply(base), base


# ----- registry ---------------------------------------------------------------------------------------
def test_every_rule_is_documented_and_registered() -> None:
    expected = {
        "delta elimination",
        "ones absorption",
        "scalar folding",
        "dense pattern",
        "down-sampling",
        "pattern sum",
        "pattern product",
        "squeeze",
        "squeeze open legs",
        "merge legs",
        "merge open legs",
        "constant folding",
    }
    assert expected <= set(RULES)
    for rule in RULES.values():
        assert "Fires" in rule.doc or "As " in rule.doc, rule.name
    with pytest.raises(KeyError, match=r"unknown rewrite rule 'no such rule'; valid rewrite rules are \['"):
        get_rule("no such rule")


# ----- delta elimination ------------------------------------------------------------------------------
@settings(max_examples=15)
@given(quantity=st.sampled_from(QUANTITIES), stride=st.integers(1, 2), padding=st.integers(0, 1), groups=st.sampled_from([1, 2]))
def test_delta_rules_keep_the_value(quantity: str, stride: int, padding: int, groups: int) -> None:
    raw = conv_term(quantity, bindings={"N": 2, "I0": 5}, k=2, dims=1, stride=stride, padding=padding, groups=groups, c_in=2, c_out=2)
    assert any(node.kind is NodeKind.DELTA for node in raw.nodes) or quantity in ("forward", "jvp_x")
    after = simplify(raw, rules=["delta elimination", "ones absorption", "scalar folding"])
    assert not any(node.kind is NodeKind.DELTA for node in after.nodes)
    assert_same_value(raw, after)


# ----- dense pattern ---------------------------------------------------------------------------------
@settings(max_examples=20)
@given(
    kernel=st.integers(1, 3),
    blocks=st.integers(1, 3),
    dims=st.integers(1, 2),
    groups=st.sampled_from([1, 2]),
    quantity=st.sampled_from(QUANTITIES),
)
def test_dense_pattern_fires_for_k_equal_s_and_keeps_the_value(kernel: int, blocks: int, dims: int, groups: int, quantity: str) -> None:
    size = kernel * blocks
    bindings = {"N": 2, **{f"I{d}": size for d in range(dims)}}
    raw = conv_term(quantity, bindings=bindings, k=kernel, dims=dims, stride=kernel, groups=groups)
    assert "dense pattern" in fired(raw, stage="plan")
    after = simplify(raw, stage="plan")
    assert not any(node.kind is NodeKind.PATTERN for node in after.nodes)
    assert_same_value(raw, after)


def test_one_by_one_convolution_is_dense_without_binding_sizes() -> None:
    raw = derive(tnderiv.Conv(3, 4, 1).network({}), "forward", False).terms[0]
    assert "dense pattern" in fired(raw, stage="plan")  # I = O·1 is provable for a symbolic I
    assert not any(n.kind is NodeKind.PATTERN for n in simplify(raw, stage="plan").nodes)
    assert "dense pattern" not in fired(raw)  # a plan-stage rule: derived diagrams keep their patterns


@pytest.mark.parametrize(
    ("hyper", "size"),
    [
        (dict(k=2, stride=2, padding=1), 6),  # padding
        (dict(k=2, stride=2, dilation=2), 8),  # dilation with K > 1
        (dict(k=3, stride=2), 7),  # K ≠ S (overlapping windows)
        (dict(k=2, stride=2), 7),  # I not divisible by K
    ],
)
def test_dense_pattern_does_not_fire(hyper: dict, size: int) -> None:
    raw = conv_term("forward", bindings={"N": 2, "I0": size}, dims=1, **hyper)
    result, _ = rewrite_once("dense pattern", raw)
    assert result is None
    result, base = rewrite_once("dense pattern", conv_term("vjp_x", bindings={"N": 2, "I0": size}, dims=1, **hyper))
    assert result is None and "i0" in base.open_legs


def test_dense_pattern_waits_for_sizes_when_divisibility_is_symbolic() -> None:
    raw = derive(tnderiv.Conv(2, 3, 2, dims=1, stride=2).network({}), "forward", False).terms[0]
    assert "dense pattern" not in fired(raw, stage="plan")  # I0 = 2·O0 is not provable for a symbolic I0
    bound = concrete(raw, {sympy.Symbol("I0", integer=True, positive=True): 6, sympy.Symbol("N", integer=True, positive=True): 2})
    assert "dense pattern" in fired(bound, stage="plan")


# ----- down-sampling ---------------------------------------------------------------------------------
@settings(max_examples=20)
@given(
    kernel=st.integers(1, 3),
    extra=st.integers(0, 2),
    dilation=st.integers(1, 2),
    size=st.integers(4, 11),
    quantity=st.sampled_from(("forward", "vjp_weight", "per_sample_grad_weight", "jvp_x")),
)
def test_down_sampling_keeps_the_value(kernel: int, extra: int, dilation: int, size: int, quantity: str) -> None:
    stride = (kernel - 1) * dilation + 1 + extra  # windows do not overlap
    if (kernel - 1) * dilation + 1 > size:
        return
    raw = conv_term(quantity, bindings={"N": 2, "I0": size}, k=kernel, dims=1, stride=stride, dilation=dilation)
    after = simplify(raw, stage="plan")
    steps = fired(raw, stage="plan")
    assert "down-sampling" in steps or "dense pattern" in steps
    assert not any(node.kind is NodeKind.PATTERN for node in after.nodes)
    assert_same_value(raw, after)


def test_down_sampling_reads_a_strided_view() -> None:
    raw = conv_term("forward", bindings={"N": 2, "I0": 9}, k=1, dims=1, stride=2)
    after = simplify(raw, stage="plan")
    x = next(n for n in after.nodes if n.name == "x")
    assert x.view is not None and any(v is not None and v.strides[0] == 2 for v in x.view)
    assert_same_value(raw, after)


@pytest.mark.parametrize("hyper", [dict(k=3, stride=2), dict(k=2, stride=3, padding=1), dict(k=2, stride=2, dilation=2)])
def test_down_sampling_does_not_fire_on_overlap_or_padding(hyper: dict) -> None:
    raw = conv_term("forward", bindings={"N": 2, "I0": 9}, dims=1, **hyper)
    result, _ = rewrite_once("down-sampling", raw)
    assert result is None


# ----- pattern sum (Π̄) ---------------------------------------------------------------------------------
SIZES = {"n": 2, "c": 2, "k": 3, "o": 4, "i": 6}


@settings(max_examples=20)
@given(leg=st.sampled_from(["o", "i", "k"]), stride=st.integers(1, 2), pad=st.integers(0, 2), mode=st.sampled_from(list(PaddingMode)))
def test_pattern_sum_folds_a_private_leg(leg: str, stride: int, pad: int, mode: PaddingMode) -> None:
    params = PatternParams(stride, 1, pad, mode)
    data_legs = [x for x in ("k", "o", "i") if x != leg]
    x = operand("x", "n", "c", *data_legs)
    d = Diagram((x, pattern("k", "o", "i", params)), ("n", "c"), SIZES)
    after = get_rule("pattern sum").apply(d)
    assert after is not None
    folded = [n for n in after.nodes if n.kind is NodeKind.FOLDED]
    assert len(folded) == 1 and set(folded[0].legs) == set(data_legs) and folded[0].display_name == "Π̄"
    assert_same_value(d, after)


def test_pattern_sum_does_not_fire_when_every_leg_is_shared() -> None:
    d = Diagram((operand("x", "n", "i"), pattern("k", "o", "i", PatternParams(1)), operand("w", "k"), operand("g", "n", "o")), ("n",), SIZES)
    assert get_rule("pattern sum").apply(d) is None
    d_open = Diagram((operand("x", "n", "i"), pattern("k", "o", "i", PatternParams(1))), ("n", "k", "o"), SIZES)
    assert get_rule("pattern sum").apply(d_open) is None


# ----- Π ⊙ Π → Π ----------------------------------------------------------------------------------------
@settings(max_examples=20)
@given(stride=st.integers(1, 3), pad=st.integers(0, 2), dilation=st.integers(1, 2), mode=st.sampled_from(list(PaddingMode)), share=st.sampled_from(["all", "ko", "ki", "oi"]))
def test_pattern_product(stride: int, pad: int, dilation: int, mode: PaddingMode, share: str) -> None:
    params = PatternParams(stride, dilation, pad, mode)
    legs2 = {"all": ("k", "o", "i"), "ko": ("k", "o", "j"), "ki": ("k", "p", "i"), "oi": ("l", "o", "i")}[share]
    sizes = dict(SIZES, j=SIZES["i"], p=SIZES["o"], l=SIZES["k"])
    other = [leg for leg in legs2 if leg not in ("k", "o", "i")]
    nodes = (pattern("k", "o", "i", params), pattern(*legs2, params), operand("x", "i", "o", "k"), *(operand(f"y{leg}", leg) for leg in other))
    d = Diagram(nodes, (), sizes)
    after = get_rule("pattern product").apply(d)
    fires = share in ("all", "ko") or mode is PaddingMode.ZEROS
    assert (after is not None) == fires
    if after is not None:
        assert sum(n.kind is NodeKind.PATTERN for n in after.nodes) == 1
        assert_same_value(d, after)


def test_pattern_product_needs_equal_hyperparameters() -> None:
    d = Diagram((pattern("k", "o", "i", PatternParams(1)), pattern("k", "o", "i", PatternParams(2)), operand("x", "i", "o", "k")), (), SIZES)
    assert get_rule("pattern product").apply(d) is None
    same = Diagram((delta("a", "b"), delta("b", "a"), operand("x", "a", "b")), ("a", "b"), {"a": 3, "b": 3})
    after = get_rule("pattern product").apply(same)
    assert after is not None and len(after.nodes) == 2
    assert_same_value(same, after)


# ----- squeeze and merge ------------------------------------------------------------------------------
def test_squeeze_summed_and_open_size_one_legs() -> None:
    sizes = {"n": 3, "a": 1, "b": 4, "c": 1}
    d = Diagram((operand("x", "n", ("a", "b")), operand("w", "b", "a", "c"), ones("c")), ("n", "c"), sizes)
    after = simplify(d, rules=["squeeze"])
    assert "a" not in after.sizes and "c" in after.sizes  # open leg c stays at the derive stage
    assert_same_value(d, after)
    fully = simplify(d, stage="plan")
    assert "c" not in fully.sizes and fully.open_axis_groups == ((("n",), ()))
    assert_same_value(d, fully)


def test_squeeze_leaves_pattern_legs_alone() -> None:
    d = Diagram((operand("x", "n", "i"), pattern("k", "o", "i", PatternParams(1, 1, 1)), operand("w", "k")), ("n", "o"), {"n": 2, "i": 4, "k": 1, "o": 6})
    assert get_rule("squeeze").apply(d) is None


@settings(max_examples=15)
@given(a=st.integers(1, 3), b=st.integers(2, 3), open_=st.booleans())
def test_merge_legs_that_travel_together(a: int, b: int, open_: bool) -> None:
    sizes = {"n": 2, "a": a, "b": b, "c": 3}
    if open_:
        d = Diagram((operand("x", "n", ("a", "b")), operand("w", ("a", "b"), "c")), ("n", "c", "a", "b"), sizes, open_groups=(1, 1, 2))
        rule = "merge open legs"
    else:
        d = Diagram((operand("x", "n", ("a", "b")), operand("w", "c", ("a", "b"))), ("n", "c"), sizes)
        rule = "merge legs"
    after = get_rule(rule).apply(d)
    assert after is not None and "a" not in after.sizes and "b" not in after.sizes
    assert_same_value(d, after)


def test_merge_legs_needs_adjacent_legs_in_one_axis_and_one_order() -> None:
    sizes = {"n": 2, "a": 2, "b": 3, "c": 3}
    separate_axes = Diagram((operand("x", "n", "a", "b"), operand("w", "c", "a", "b")), ("n", "c"), sizes)
    swapped = Diagram((operand("x", "n", ("a", "b")), operand("w", "c", ("b", "a"))), ("n", "c"), sizes)
    for d in (separate_axes, swapped):
        assert get_rule("merge legs").apply(d) is None


# ----- constant folding --------------------------------------------------------------------------------
def test_constant_folding_of_two_patterns_sharing_private_legs() -> None:
    params = PatternParams(1, 1, 1, PaddingMode.REFLECT)
    sizes = {"k": 3, "l": 3, "o": 5, "i": 5}
    d = Diagram((pattern("k", "o", "i", params), pattern("l", "o", "i", params), operand("w", "k"), operand("v", "l")), (), sizes)
    after = get_rule("constant folding").apply(d)
    assert after is not None
    folded = [n for n in after.nodes if n.kind is NodeKind.FOLDED]
    assert len(folded) == 1 and set(folded[0].legs) == {"k", "l"}
    assert_same_value(d, after)


def test_constant_folding_does_not_grow_tensors() -> None:
    sizes = {"k": 3, "l": 3, "o": 4, "i": 6, "j": 6}
    d = Diagram((pattern("k", "o", "i", PatternParams(1)), pattern("l", "o", "j", PatternParams(1)), operand("x", "i"), operand("y", "j"), operand("w", "k", "l")), (), sizes)
    assert get_rule("constant folding").apply(d) is None  # folding Σ_o would give [k, i, l, j]: larger than either


def test_rule_names_are_unique_unless_replaced() -> None:
    from tnderiv.ir import DuplicateNameError
    from tnderiv.simplify import rule as register_rule

    original = RULES["squeeze"]
    with pytest.raises(DuplicateNameError, match=r"^rewrite rule 'squeeze' is already registered; pass replace=True"):
        register_rule("squeeze")(original.apply)
    assert RULES["squeeze"] is original
    try:
        register_rule("test: never fires")(lambda diagram: None)
        register_rule("test: never fires", replace=True)(lambda diagram: None)
        assert RULES["test: never fires"].apply(Diagram((), (), {})) is None
    finally:
        del RULES["test: never fires"]


def test_stages_are_a_literal_in_the_signature() -> None:
    import typing

    from tnderiv.simplify import STAGES, Stage
    from tnderiv.simplify import rule as register_rule
    from tnderiv.simplify.rule import ordered_rules

    assert STAGES == typing.get_args(Stage) == ("derive", "plan")
    hint = typing.get_type_hints(register_rule)["stage"]
    assert typing.get_args(hint) == STAGES
    with pytest.raises(ValueError, match=r"stage='simplify': expected one of \['derive', 'plan'\]"):
        register_rule("test: bad stage", stage="simplify")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"stage='late': expected one of \['derive', 'plan'\]"):
        ordered_rules("late")  # type: ignore[arg-type]
    assert {r.stage for r in ordered_rules("plan")} == set(STAGES)
