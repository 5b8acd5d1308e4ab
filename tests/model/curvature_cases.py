"""The model zoo of the ``tnderiv.Curvature`` tests: tiny float64 models of every shape the issue claims.

Each ``Case`` builds a seeded model (eval mode where it has batch norm), a batch ``(x, y)`` and its loss
module. ``kfac`` lists the engine layers called once (KFAC is checked against factors formed in the test);
``fallback`` the modules the report must name as ``torch.func`` fallbacks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

DT = torch.float64


class Mlp(nn.Module):
    def __init__(self, d_in: int = 3, hidden: int = 4, d_out: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Cnn(nn.Module):
    """A grouped conv with reflect padding, ReLU, max-pool, a grouped transposed conv, flatten, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect", groups=2)
        self.pool = nn.MaxPool2d(2)
        self.convt = nn.ConvTranspose2d(4, 2, 2, stride=1, groups=2)
        self.fc = nn.Linear(2 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(F.relu(self.conv(x)))  # [N, 4, 2, 2]
        h = self.convt(h)  # [N, 2, 3, 3]
        return self.fc(torch.flatten(h, 1))


class Residual(nn.Module):
    """conv → eval-mode batch norm → ReLU → conv, plus the skip connection, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(2)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 3 * 3, 3)
        with torch.no_grad():
            self.bn.running_mean.copy_(torch.tensor([0.3, -0.2]))
            self.bn.running_var.copy_(torch.tensor([1.5, 0.7]))
            self.bn.weight.copy_(torch.tensor([1.2, 0.8]))
            self.bn.bias.copy_(torch.tensor([0.1, -0.3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.relu(self.bn(self.conv1(x))))
        return self.fc(torch.flatten(F.relu(h + x), 1))


class Encoder(nn.Module):
    """A transformer encoder layer from ``nn.Linear``, ``LayerNorm`` and softmax attention, with a token head."""

    def __init__(self, d: int = 4, heads: int = 2, ff: int = 6, classes: int = 5) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, s, d = x.shape
        h = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, s, h, d // h).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // h) ** 0.5, dim=-1)
        a = (att @ v).transpose(1, 2).reshape(n, s, d)
        x = self.ln1(x + self.o(a))
        x = self.ln2(x + self.ff2(torch.tanh(self.ff1(x))))
        return self.head(x)  # [N, S, C]: classes last


class FallbackModel(nn.Module):
    """``nn.Embedding``, a free ``nn.Parameter`` and ``nn.MultiheadAttention`` (all without a tnderiv spec)."""

    def __init__(self, vocab: int = 5, d: int = 4, s: int = 3, classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(s, d) * 0.5)
        self.mha = nn.MultiheadAttention(d, 2, batch_first=True)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.emb(tokens) + self.pos
        a, _ = self.mha(h, h, h, need_weights=False)
        return self.head(torch.tanh(a).mean(1))


class Tied(nn.Module):
    """A language-model head tied to the input embedding; outputs ``[N, S, V]``."""

    def __init__(self, vocab: int = 5, d: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.lin = nn.Linear(d, d)
        self.out = nn.Linear(d, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.lin(self.emb(tokens))))


class Twice(nn.Module):
    """The same ``nn.Linear`` called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.out = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.lin(torch.tanh(self.lin(x)))))


class TwoInputs(nn.Module):
    """``model(a, b)`` / ``model(a=..., b=...)``."""

    def __init__(self) -> None:
        super().__init__()
        self.fa, self.fb = nn.Linear(3, 4), nn.Linear(2, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.fa(a) + self.fb(b)))


# ----- the case table --------------------------------------------------------------------------------


def _labels(n: int, c: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, c, (n,), generator=g)


@dataclass(frozen=True)
class Case:
    """A model, its loss and a batch. ``classes_last``: cross-entropy on ``[N, *S, C]`` outputs."""

    name: str
    build: Callable[[], nn.Module]
    data: Callable[[int, torch.Generator], tuple[Any, torch.Tensor]]
    loss: Callable[[], nn.Module] = nn.CrossEntropyLoss
    n: int = 4
    kfac: tuple[str, ...] = ()
    fallback: tuple[str, ...] = ()
    classes_last: bool = False
    notes: dict[str, Any] = field(default_factory=dict)

    def make(self, seed: int = 0, n: int | None = None) -> tuple[nn.Module, Any, torch.Tensor]:
        """The model (float64, seeded) and a batch of ``n`` samples."""
        torch.manual_seed(seed)
        model = self.build().to(DT)
        model.eval()  # batch norm with running statistics; no dropout anywhere
        g = torch.Generator().manual_seed(seed + 1)
        x, y = self.data(self.n if n is None else n, g)
        return model, x, y


def _seq_labels(n: int, g: torch.Generator, s: int = 3, c: int = 3) -> torch.Tensor:
    y = torch.randint(0, c, (n, s), generator=g)
    y[0, 1] = -100  # ignore_index positions
    y[-1, 0] = -100
    return y


def _randn(*shape: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=DT)


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("mlp", Mlp, lambda n, g: (_randn(n, 3, g=g), _labels(n, 3, g)), kfac=("net.0", "net.2")),
        Case(
            "cnn",
            Cnn,
            lambda n, g: (_randn(n, 2, 4, 4, g=g), _labels(n, 3, g)),
            n=3,
            kfac=("conv", "convt", "fc"),
        ),
        Case(
            "residual",
            Residual,
            lambda n, g: (_randn(n, 2, 3, 3, g=g), _labels(n, 3, g)),
            n=3,
            kfac=("conv1", "bn", "conv2", "fc"),
        ),
        Case(
            "encoder",
            Encoder,
            lambda n, g: (_randn(n, 3, 4, g=g), _seq_labels(n, g, c=5)),
            n=3,
            kfac=("q", "k", "v", "o", "ln1", "ff1", "ff2", "ln2", "head"),
            classes_last=True,
        ),
        Case(
            "fallback",
            FallbackModel,
            lambda n, g: (torch.randint(0, 5, (n, 3), generator=g), _labels(n, 3, g)),
            n=3,
            kfac=("head",),
            fallback=("", "emb", "mha"),
        ),
        Case(
            "tied",
            Tied,
            lambda n, g: (torch.randint(0, 5, (n, 3), generator=g), _seq_labels(n, g, c=5)),
            n=3,
            kfac=("lin",),
            classes_last=True,
        ),
        Case("twice", Twice, lambda n, g: (_randn(n, 3, g=g), _labels(n, 2, g)), kfac=("out",)),
        Case(
            "tuple",
            TwoInputs,
            lambda n, g: ((_randn(n, 3, g=g), _randn(n, 2, g=g)), _labels(n, 3, g)),
            kfac=("fa", "fb", "out"),
        ),
        Case(
            "dict",
            TwoInputs,
            lambda n, g: ({"a": _randn(n, 3, g=g), "b": _randn(n, 2, g=g)}, _labels(n, 3, g)),
            kfac=("fa", "fb", "out"),
        ),
        Case(
            "mse-mean",
            Mlp,
            lambda n, g: (_randn(n, 3, g=g), _randn(n, 3, g=g)),
            loss=lambda: nn.MSELoss(),
            kfac=("net.0", "net.2"),
        ),
        Case(
            "mse-sum",
            Mlp,
            lambda n, g: (_randn(n, 3, g=g), _randn(n, 3, g=g)),
            loss=lambda: nn.MSELoss(reduction="sum"),
            kfac=("net.0", "net.2"),
        ),
        Case(
            "bce-mean",
            Mlp,
            lambda n, g: (_randn(n, 3, g=g), torch.rand(n, 3, generator=g, dtype=DT)),
            loss=lambda: nn.BCEWithLogitsLoss(),
            kfac=("net.0", "net.2"),
        ),
        Case(
            "bce-sum",
            Mlp,
            lambda n, g: (_randn(n, 3, g=g), torch.rand(n, 3, generator=g, dtype=DT)),
            loss=lambda: nn.BCEWithLogitsLoss(reduction="sum"),
            kfac=("net.0", "net.2"),
        ),
        Case(
            "ce-sum",
            Mlp,
            lambda n, g: (_randn(n, 3, g=g), _labels(n, 3, g)),
            loss=lambda: nn.CrossEntropyLoss(reduction="sum"),
            kfac=("net.0", "net.2"),
        ),
    )
}


__all__ = ["CASES", "DT", "Case"]
