"""The whole networks of the model benchmark: 3C3D, ResNet-18 and a small transformer encoder, plus a tiny CNN.

Each builder returns an ``nn.Module``; ``ZOO`` maps a name to a ``Net`` (builder, input shape, classes).
Batch norm is put in eval mode (the per-sample quantities are undefined through train-mode batch norm).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


def c3d3(num_classes: int = 10) -> nn.Sequential:
    """3C3D (DeepOBS ``cifar10_3c3d``, BackPACK's test problem) on ``[N, 3, 32, 32]``: three conv–ReLU–max-pool
    stages (64 5×5 pad 2, 96 3×3, 128 3×3 pad 1; pool 3×3 stride 2), then dense 512 → 256 → ``num_classes``."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=2),  # 32 → 15
        nn.Conv2d(64, 96, 3), nn.ReLU(), nn.MaxPool2d(3, stride=2),  # 15 → 13 → 6
        nn.Conv2d(96, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2),  # 6 → 2
        nn.Flatten(),
        nn.Linear(128 * 2 * 2, 512), nn.ReLU(),
        nn.Linear(512, 256), nn.ReLU(),
        nn.Linear(256, num_classes),
    )


class BasicBlock(nn.Module):
    """ResNet basic block: conv3×3–BN–ReLU–conv3×3–BN, plus the (1×1 conv–BN projected) shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, inplace: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """torchvision's ``resnet18`` layout (7×7 stride-2 stem, max-pool, four stages of two basic blocks, 64–512
    channels, global average pool, linear head), written out; on 32×32 inputs the stages see 8, 4, 2, 1 pixels.
    ``inplace``: torchvision's in-place ReLUs (what memory benchmarks measure)."""

    def __init__(self, num_classes: int = 10, inplace: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=inplace)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        widths = (64, 128, 256, 512)
        cin = 64
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = (BasicBlock(cin, width, stride, inplace), BasicBlock(width, width, 1, inplace))
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


def resnet18(num_classes: int = 10) -> ResNet18:
    """ResNet-18 with batch norm in eval mode, its running statistics randomized (so that they matter)."""
    model = ResNet18(num_classes)
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(1 + 0.2 * torch.rand(m.num_features, generator=gen))
            with torch.no_grad():
                m.weight.copy_(1 + 0.1 * torch.randn(m.num_features, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))
    return model.eval()


class SelfAttention(nn.Module):
    """Multi-head softmax self-attention from four ``nn.Linear`` (q, k, v, out) on ``[N, S, D]``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, s, d = x.shape
        h = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, s, h, d // h).transpose(1, 2)  # [N, h, S, d/h]

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(n, s, d))


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer: x + attention → LayerNorm → x + MLP (GELU, 4× width) → LayerNorm."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = SelfAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.fc2(self.act(self.fc1(x))))


class Transformer(nn.Module):
    """Encoder classifier on ``[N, S, D]`` (already embedded): ``layers`` encoder layers, mean over the sequence,
    linear head to ``num_classes``."""

    def __init__(self, dim: int = 256, heads: int = 4, layers: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(EncoderLayer(dim, heads) for _ in range(layers)))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x).mean(dim=1))


def tiny_cnn(num_classes: int = 3) -> nn.Sequential:
    """A small CNN for tests and quick checks on ``[N, 2, 8, 8]``."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, num_classes),
    )


@dataclass(frozen=True)
class Net:
    """A benchmark network: how to build it, the shape of one input sample, the number of classes."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    classes: int
    describe: str

    def model(self, dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return self.build().to(dtype)

    def data(self, batch: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed + 1)
        x = torch.randn(batch, *self.input_shape, generator=gen, dtype=dtype)
        y = torch.randint(0, self.classes, (batch,), generator=gen)
        return x, y


ZOO: dict[str, Net] = {
    "3c3d": Net("3c3d", c3d3, (3, 32, 32), 10, "3C3D (3 conv + 3 dense, ReLU, max-pool) on 3×32×32"),
    "resnet18": Net("resnet18", resnet18, (3, 32, 32), 10,
                    "ResNet-18 (torchvision layout, eval-mode batch norm) on 3×32×32"),
    "transformer": Net("transformer", Transformer, (64, 256), 10,
                       "2-layer post-norm transformer encoder (width 256, 4 heads, sequence 64, hand-written attention "
                       "from nn.Linear + softmax, LayerNorm, GELU MLP), mean-pooled, linear head"),
    "tiny": Net("tiny", tiny_cnn, (2, 8, 8), 3, "tiny CNN (conv 2→4, max-pool, dense 64 → 8 → 3) on 2×8×8"),
}
