"""memsave and required_operands against torch: values, gradients, what is saved, and what a VJP reads.

Oracles: the original torch modules under autograd (outputs, gradients, running statistics); the
bytes a test knows must be saved; and, for what a VJP reads, whether torch's VJP *value* changes
when one operand is redrawn (a VJP reads an operand iff it depends on it).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable

import pytest
import torch
import torch.nn as nn

import tnderiv
from tnderiv.calculus.operands import derived_sources, saved_operands
from tnderiv.layers import spec_of

D = torch.float64

# ----- cases: (id, module factory, input shape) -----------------------------------------------------

LAYERS: list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]] = [
    ("linear", lambda: nn.Linear(5, 4), (3, 5)),
    ("linear-seq-nobias", lambda: nn.Linear(5, 4, bias=False), (2, 3, 5)),
    ("linear-unbatched", lambda: nn.Linear(5, 4), (5,)),
    ("conv1d-stride", lambda: nn.Conv1d(2, 4, 3, stride=2, padding=1), (2, 2, 9)),
    ("conv2d", lambda: nn.Conv2d(3, 4, 3, padding=1), (2, 3, 6, 5)),
    ("conv2d-groups-dilation", lambda: nn.Conv2d(4, 6, 3, groups=2, dilation=2, bias=False), (2, 4, 8, 8)),
    ("conv2d-same-even", lambda: nn.Conv2d(2, 3, 4, padding="same"), (2, 2, 7, 6)),
    ("conv2d-valid", lambda: nn.Conv2d(2, 3, 3, padding="valid", stride=(2, 1)), (2, 2, 7, 6)),
    ("conv2d-reflect", lambda: nn.Conv2d(2, 3, 3, padding=(1, 2), padding_mode="reflect"), (2, 2, 6, 6)),
    ("conv2d-replicate", lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="replicate"), (2, 2, 5, 5)),
    ("conv2d-circular", lambda: nn.Conv2d(2, 3, 3, padding=2, padding_mode="circular", stride=2), (2, 2, 6, 6)),
    ("conv2d-unbatched", lambda: nn.Conv2d(2, 3, 3), (2, 5, 5)),
    ("conv3d", lambda: nn.Conv3d(2, 2, 2, stride=2, padding=1), (2, 2, 4, 3, 4)),
    ("convT1d", lambda: nn.ConvTranspose1d(3, 2, 3, stride=2, output_padding=1), (2, 3, 5)),
    ("convT2d-groups", lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2, dilation=2), (2, 4, 4, 3)),
    ("convT3d-nobias", lambda: nn.ConvTranspose3d(2, 2, 2, stride=2, bias=False), (1, 2, 2, 3, 2)),
    ("bn1d-train", lambda: nn.BatchNorm1d(3), (4, 3, 5)),
    ("bn2d-eval", lambda: nn.BatchNorm2d(3).eval(), (2, 3, 4, 4)),
    ("bn1d-train-cumulative-2d-input", lambda: nn.BatchNorm1d(3, momentum=None), (5, 3)),
    ("bn2d-train-untracked", lambda: nn.BatchNorm2d(3, track_running_stats=False), (2, 3, 4, 4)),
    ("bn3d-eval-noaffine", lambda: nn.BatchNorm3d(2, affine=False).eval(), (2, 2, 3, 2, 2)),
    ("ln", lambda: nn.LayerNorm((3, 4)), (2, 5, 3, 4)),
    ("ln-nobias", lambda: nn.LayerNorm(4, bias=False), (3, 4)),
    ("gn", lambda: nn.GroupNorm(2, 4), (2, 4, 3, 3)),
    ("in1d-affine", lambda: nn.InstanceNorm1d(3, affine=True), (2, 3, 6)),
    ("in2d-eval-tracked", lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True).eval(), (2, 3, 4, 4)),
    ("in2d-plain", lambda: nn.InstanceNorm2d(3), (2, 3, 4, 4)),
    ("rms", lambda: nn.RMSNorm(4), (3, 2, 4)),
    ("relu", lambda: nn.ReLU(), (3, 7)),
    ("leaky", lambda: nn.LeakyReLU(0.2), (3, 7)),
    ("maxpool1d", lambda: nn.MaxPool1d(3, 2, 1), (2, 3, 9)),
    ("maxpool2d-overlap-ceil", lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True), (2, 3, 8, 7)),
    ("maxpool2d-dilation-unbatched", lambda: nn.MaxPool2d(2, 1, dilation=2), (3, 6, 6)),
    ("maxpool3d", lambda: nn.MaxPool3d(2), (1, 2, 4, 4, 5)),
]

# which tensors need gradients: x, the weight, the bias, all parameters, or everything
GRADS = {"x": ("x",), "weight": ("weight",), "bias": ("bias",), "params": ("weight", "bias"), "all": ("x", "weight", "bias")}


def _randomize(module: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    module = module.to(D)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn_like(b))
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
    return module


def _apply_grads(module: nn.Module, x: torch.Tensor, which: tuple[str, ...]) -> list[torch.Tensor]:
    """Set requires_grad as asked; return the tensors whose gradients are compared."""
    x.requires_grad_("x" in which)
    wanted = [x] if "x" in which else []
    for name, p in module.named_parameters(recurse=False):
        p.requires_grad_(name in which)
        if name in which:
            wanted.append(p)
    return wanted


def _run(module: nn.Module, x: torch.Tensor, which: tuple[str, ...], g_seed: int = 3) -> tuple[torch.Tensor, list]:
    wanted = _apply_grads(module, x, which)
    y = module(x)
    if not wanted:
        return y.detach(), []
    g = torch.randn(y.shape, dtype=D, generator=torch.Generator().manual_seed(g_seed))
    return y.detach(), list(torch.autograd.grad(y, wanted, g))


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("grads", list(GRADS))
@pytest.mark.parametrize(("make", "shape"), [(m, s) for _, m, s in LAYERS], ids=[i for i, _, _ in LAYERS])
def test_layer_matches_torch(make: Callable[[], nn.Module], shape: tuple[int, ...], grads: str) -> None:
    original = _randomize(make())
    fast = tnderiv.memsave(original)
    assert type(fast) is not type(original) and isinstance(fast, type(original))
    which = GRADS[grads]
    x = torch.randn(shape, dtype=D, generator=torch.Generator().manual_seed(2))
    y0, g0 = _run(original, x.clone(), which)
    y1, g1 = _run(fast, x.clone(), which)
    _close(y0, y1)
    assert len(g0) == len(g1)
    for a, b in zip(g0, g1):
        _close(a, b)
    for (name, b0), b1 in zip(original.named_buffers(), fast.buffers()):
        torch.testing.assert_close(b0, b1, rtol=0, atol=1e-12, msg=name)


# ----- what is saved ----------------------------------------------------------------------------------


def _saved(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    packed: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        packed.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn()
    return y, packed


def _storage_bytes(tensors: list[torch.Tensor]) -> int:
    seen = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(seen.values())


def _shares(t: torch.Tensor, other: torch.Tensor) -> bool:
    return t.untyped_storage().data_ptr() == other.untyped_storage().data_ptr()


SAVED = [
    # (id, module, x shape, which, names of the module tensors that must be saved, extra bytes per x element)
    ("conv-frozen-weight", lambda: nn.Conv2d(3, 4, 3), (2, 3, 8, 8), ("x",), ("weight",)),
    ("conv-weight-only", lambda: nn.Conv2d(3, 4, 3), (2, 3, 8, 8), ("weight",), ("x",)),
    ("conv-bias-only", lambda: nn.Conv2d(3, 4, 3), (2, 3, 8, 8), ("bias",), ()),
    ("conv-all", lambda: nn.Conv2d(3, 4, 3), (2, 3, 8, 8), ("x", "weight", "bias"), ("x", "weight")),
    ("convT-frozen", lambda: nn.ConvTranspose2d(3, 4, 3, stride=2), (2, 3, 5, 5), ("x",), ("weight",)),
    ("reflect-frozen", lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), (2, 3, 6, 6), ("x",), ("weight",)),
    ("linear-frozen", lambda: nn.Linear(6, 5), (4, 6), ("x",), ("weight",)),
    ("linear-weight-only", lambda: nn.Linear(6, 5), (4, 6), ("weight",), ("x",)),
    ("bn-eval-input-only", lambda: nn.BatchNorm2d(3).eval(), (2, 3, 5, 5), ("x",), ("weight", "running_var")),
    ("bn-eval-bias-only", lambda: nn.BatchNorm2d(3).eval(), (2, 3, 5, 5), ("bias",), ()),
    ("bn-eval-weight", lambda: nn.BatchNorm2d(3).eval(), (2, 3, 5, 5), ("weight",), ("x", "running_mean", "running_var")),
    ("ln-bias-only", lambda: nn.LayerNorm(5), (3, 5), ("bias",), ()),
]


@pytest.mark.parametrize(("make", "shape", "which", "must"), [c[1:] for c in SAVED], ids=[c[0] for c in SAVED])
def test_saves_only_what_the_gradients_read(make: Callable, shape: tuple[int, ...], which: tuple[str, ...], must: tuple[str, ...]) -> None:
    module = tnderiv.memsave(_randomize(make()))
    x = torch.randn(shape, dtype=D)
    _apply_grads(module, x, which)
    _, packed = _saved(lambda: module(x))
    tensors = {"x": x, **dict(module.named_parameters()), **dict(module.named_buffers())}
    expected = [tensors[name] for name in must]
    assert _storage_bytes(packed) == _storage_bytes(expected)
    assert all(any(_shares(p, e) for e in expected) for p in packed)
    if "x" not in must:
        assert not any(_shares(p, x) for p in packed)


def test_norm_with_batch_statistics_saves_x_and_small_statistics() -> None:
    module = tnderiv.memsave(_randomize(nn.BatchNorm2d(3)))
    x = torch.randn(4, 3, 5, 5, dtype=D)
    _apply_grads(module, x, ("weight",))  # vjp_weight reads x_hat: computed from x alone
    _, packed = _saved(lambda: module(x))
    big = [p for p in packed if p.numel() >= x.numel()]
    assert len(big) == 1 and _shares(big[0], x)
    assert sum(p.numel() for p in packed if p.numel() < x.numel()) == 2 * 3  # mean and 1/std per channel


@pytest.mark.parametrize("make", [nn.ReLU, lambda: nn.LeakyReLU(0.3)], ids=["relu", "leaky"])
def test_activation_saves_a_boolean_mask(make: Callable) -> None:
    module = tnderiv.memsave(make())
    x = torch.randn(4, 9, dtype=D, requires_grad=True)
    _, packed = _saved(lambda: module(x))
    assert [p.dtype for p in packed] == [torch.bool] and _storage_bytes(packed) == x.numel()


@pytest.mark.parametrize("make", [nn.ReLU, lambda: nn.LeakyReLU(0.3)], ids=["relu", "leaky"])
def test_activation_gradient_at_zero_nan_and_subnormals_matches_torch(make: Callable) -> None:
    x = torch.tensor([[-1.0, 0.0, 2.0, -0.0, float("nan"), -float("nan"), 1e-310]], dtype=D, requires_grad=True)
    grads = [torch.autograd.grad(m(x), x, torch.full((1, 7), 3.0, dtype=D))[0] for m in (make(), tnderiv.memsave(make()))]
    assert torch.equal(grads[0], grads[1])


def test_max_pool_saves_only_its_indices() -> None:
    module = tnderiv.memsave(nn.MaxPool2d(3, 2, 1))
    x = torch.randn(2, 3, 8, 8, dtype=D, requires_grad=True)
    y, packed = _saved(lambda: module(x))
    assert [p.dtype for p in packed] == [torch.int64] and _storage_bytes(packed) == 8 * y.numel()


def test_inplace_relu_matches_torch() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 2)).to(D)
    fast = tnderiv.memsave(model)
    x = torch.randn(5, 4, dtype=D, requires_grad=True)
    for m in (model, fast):
        m.zero_grad()
    y0, y1 = model(x), fast(x)
    _close(y0, y1)
    (gx0,) = torch.autograd.grad(y0.sum(), x)
    (gx1,) = torch.autograd.grad(y1.sum(), x)
    _close(gx0, gx1)


# ----- whole models: residual connections, batch norm in both modes, frozen parts ---------------------


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(), Block(4), Block(4),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3), nn.LayerNorm(3),
    )


FREEZE = {
    "all": lambda n: True,
    "none": lambda n: False,
    "norm-only": lambda n: ".bn" in n or n.startswith("1.") or n.startswith("8."),
    "partial": lambda n: n.startswith("3.") or n.endswith("bias"),
}


# every combination of trainable parameters and input gradient in which something needs a gradient
MODEL_GRADS = [(t, i) for t in FREEZE for i in (True, False) if t != "none" or i]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize(("trainable", "input_grad"), MODEL_GRADS, ids=[f"{t}-{'x' if i else 'nox'}" for t, i in MODEL_GRADS])
def test_resnet_like_model_matches_torch(mode: str, trainable: str, input_grad: bool) -> None:
    original = _randomize(_net()).train(mode == "train")
    fast = tnderiv.memsave(original)
    assert fast.state_dict().keys() == original.state_dict().keys()
    x = torch.randn(3, 3, 8, 8, dtype=D, generator=torch.Generator().manual_seed(5))
    results = []
    for model in (original, fast):
        params = [p for n, p in model.named_parameters() if FREEZE[trainable](n)]
        for n, p in model.named_parameters():
            p.requires_grad_(FREEZE[trainable](n))
        xi = x.clone().requires_grad_(input_grad)
        y = model(xi)
        wanted = ([xi] if input_grad else []) + params
        grads = torch.autograd.grad(y, wanted, torch.ones_like(y))
        results.append((y.detach(), grads, [b.clone() for b in model.buffers()]))
    (y0, g0, b0), (y1, g1, b1) = results
    _close(y0, y1)
    for a, b in zip(g0, g1):
        _close(a, b)
    for a, b in zip(b0, b1):
        _close(a.to(D), b.to(D))


def test_eval_model_with_input_gradients_saves_no_convolution_input() -> None:
    fast = tnderiv.memsave(_randomize(_net()[:-1]).eval()).requires_grad_(False)  # without the layer norm
    x = torch.randn(2, 3, 8, 8, dtype=D, requires_grad=True)
    _, packed = _saved(lambda: fast(x))
    own = [*fast.parameters(), *fast.buffers()]
    activations = [p for p in packed if p.dtype is not torch.bool and not any(_shares(p, t) for t in own)]
    assert activations == []  # masks (bool), weights and running statistics only


def test_memsave_leaves_the_original_alone_and_pickles() -> None:
    original = _net()
    fast = tnderiv.memsave(original)
    assert not any(type(m).__name__.startswith("MemSave") for m in original.modules())
    assert type(fast[0]).__name__ == "MemSaveConv2d" and type(fast[5]) is nn.AdaptiveAvgPool2d
    again = pickle.loads(pickle.dumps(fast))
    assert type(again[0]) is type(fast[0])


def test_subclasses_of_supported_types_stay() -> None:
    class MyConv(nn.Conv2d):
        pass

    fast = tnderiv.memsave(nn.Sequential(MyConv(2, 2, 1)))
    assert type(fast[0]) is MyConv


def test_memsave_rejects_non_modules() -> None:
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got function"):
        tnderiv.memsave(lambda x: x)  # type: ignore[arg-type]


# ----- required_operands: what a VJP reads, against the dependence of torch's VJP values -------------

# (id, module, x shape, names of the tensors the forward takes; running statistics are buffers)
READS = [
    ("conv", lambda: nn.Conv2d(2, 3, 3), (2, 2, 5, 5)),
    ("convT", lambda: nn.ConvTranspose1d(2, 3, 3, stride=2), (2, 2, 4)),
    ("linear", lambda: nn.Linear(3, 4), (2, 3)),
    ("bn-train", lambda: nn.BatchNorm2d(3), (3, 3, 2, 2)),
    ("bn-eval", lambda: nn.BatchNorm2d(3).eval(), (3, 3, 2, 2)),
    ("ln", lambda: nn.LayerNorm(4), (3, 4)),
    ("gn", lambda: nn.GroupNorm(2, 4), (2, 4, 3)),
    ("rms", lambda: nn.RMSNorm(4), (3, 4)),
]


def _depends(module: nn.Module, x: torch.Tensor, wrt: str) -> set[str]:
    """The tensors torch's VJP w.r.t. ``wrt`` depends on: those whose redrawing changes its value."""
    names = ["x", *(n for n, _ in module.named_parameters()), *(n for n, b in module.named_buffers() if b.is_floating_point())]
    values = {"x": x, **{n: p.detach() for n, p in module.named_parameters()}, **dict(module.named_buffers())}
    g = torch.randn_like(module(x))

    def vjp(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        leaves = {k: v.detach().clone().requires_grad_(k == wrt) for k, v in tensors.items()}
        params = {k: v for k, v in leaves.items() if k != "x"}
        y = torch.func.functional_call(module, params, (leaves["x"],))
        return torch.autograd.grad(y, leaves[wrt], g)[0]

    base = vjp(values)
    reads = set()
    for name in names:
        redrawn = dict(values)
        redrawn[name] = torch.rand_like(values[name]) + 0.5
        if not torch.allclose(vjp(redrawn), base, rtol=1e-9, atol=1e-12):
            reads.add(name)
    return reads


@pytest.mark.parametrize(("make", "shape"), [c[1:] for c in READS], ids=[c[0] for c in READS])
def test_saved_operands_are_exactly_what_the_vjp_depends_on(make: Callable, shape: tuple[int, ...]) -> None:
    module = _randomize(make())
    x = torch.randn(shape, dtype=D)
    network = spec_of(module).network({"x": shape})
    given = {"x": x, **{n: b for n, b in module.named_buffers() if b.is_floating_point()}}
    for wrt in ("x", *(n for n, _ in module.named_parameters())):
        assert set(saved_operands(network, (wrt,), given)) == _depends(module, x, wrt), wrt


def test_required_operands_examples() -> None:
    conv = nn.Conv2d(2, 3, 3)
    assert tnderiv.required_operands(conv, "x") == ("weight",)
    assert tnderiv.required_operands(conv, ("weight",)) == ("x",)
    assert tnderiv.required_operands(conv, ("x", "weight", "bias")) == ("x", "weight")
    assert tnderiv.required_operands(conv, "bias") == ()
    # the definition: the weight VJP's diagram reads x and grad_out, the input VJP's the weight and grad_out
    assert set(tnderiv.diagram(conv, "vjp_weight").operand_names) == {"x", "grad_out"}
    assert set(tnderiv.diagram(conv, "vjp_x").operand_names) == {"weight", "grad_out"}
    bn = nn.BatchNorm2d(3)
    assert tnderiv.required_operands(bn, "x") == ("weight", "x_hat", "inv_std")
    assert tnderiv.required_operands(bn.eval(), "x") == ("weight", "inv_std")
    assert tnderiv.required_operands(nn.LayerNorm(4), "weight", x_shape=(2, 4)) == ("x_hat",)


def test_derived_sources_of_eval_batch_norm() -> None:
    module = _randomize(nn.BatchNorm2d(3).eval())
    network = spec_of(module).network({"x": (2, 3, 2, 2)})
    sources = derived_sources(network, {"x": torch.randn(2, 3, 2, 2, dtype=D), "running_mean": module.running_mean, "running_var": module.running_var})
    assert sources == {"x_hat": ("x", "running_mean", "running_var"), "inv_std": ("running_var",)}


def test_required_operands_rejects_unknown_operands() -> None:
    with pytest.raises(ValueError, match=r"wrt='gamma': 'gamma' is not an operand of this layer; expected names from \['x', 'weight', 'bias'\]"):
        tnderiv.required_operands(nn.Linear(2, 3), "gamma")


def test_transposed_convolution_with_output_size_matches_torch() -> None:
    original = _randomize(nn.ConvTranspose2d(2, 3, 3, stride=3, padding=1))
    fast = tnderiv.memsave(original)
    x = torch.randn(2, 2, 4, 5, dtype=D, requires_grad=True)
    outputs = [m(x, output_size=[11, 15]) for m in (original, fast)]
    assert outputs[0].shape == (2, 3, 11, 15)
    _close(outputs[0].detach(), outputs[1].detach())
    grads = [torch.autograd.grad(y, [x, m.weight], torch.ones_like(y)) for y, m in zip(outputs, (original, fast))]
    for a, b in zip(*grads):
        _close(a, b)


def test_second_derivatives_raise() -> None:
    fast = tnderiv.memsave(nn.Linear(3, 2).to(D))
    x = torch.randn(4, 3, dtype=D, requires_grad=True)
    (g,) = torch.autograd.grad(fast(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.sum().backward()
