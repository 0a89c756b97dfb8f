"""Model registry: the seed's teacher and student, and CPU-sized models for quick runs.

    create_model("resnet18")   # seed teacher, 11.17M parameters
    create_model("cnn3")       # seed student, 0.62M parameters
    list_models()

Two families cover them all: `ResNet` (BasicBlock stages) and `ConvNet`
(conv-BN-ReLU-maxpool stages and a small classifier head).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from kdtune.errors import UserError

NUM_CLASSES = 10
_REGISTRY: dict[str, Callable[[int], nn.Module]] = {}


def register(name: str):
    def add(builder: Callable[[int], nn.Module]):
        assert name not in _REGISTRY, f"model {name!r} registered twice"
        _REGISTRY[name] = builder
        return builder

    return add


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def check_model_name(name: str) -> str:
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return name


def create_model(name: str, num_classes: int = NUM_CLASSES) -> nn.Module:
    return _REGISTRY[check_model_name(name)](num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv_bn(c_in: int, c_out: int, stride: int = 1, bias: bool = False) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=bias), nn.BatchNorm2d(c_out)]


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(c_in, c_out, stride), nn.ReLU(inplace=True), *_conv_bn(c_out, c_out))
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            # Projection shortcut (1x1 conv + BN) when the shape changes, as in the seed's ResNet-18.
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """3x3 stem, stages of BasicBlocks (the first at stride 1, then stride 2), global pool, dropout, fc."""

    def __init__(self, blocks: tuple[int, ...], widths: tuple[int, ...], dropout: float, num_classes: int):
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(3, widths[0]), nn.ReLU(inplace=True)]
        c_in = widths[0]
        for stage, (n_blocks, width) in enumerate(zip(blocks, widths)):
            for i in range(n_blocks):
                layers.append(BasicBlock(c_in, width, stride=2 if stage > 0 and i == 0 else 1))
                c_in = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ConvNet(nn.Module):
    """Stages of conv3x3-BN-ReLU-maxpool(2), flatten, optional hidden fc with dropout, fc."""

    def __init__(
        self, widths: tuple[int, ...], hidden: int | None, dropout: float, num_classes: int, conv_bias: bool = False
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for width in widths:
            layers += [*_conv_bn(c_in, width, bias=conv_bias), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = width
        self.features = nn.Sequential(*layers)
        flat = c_in * (32 // 2 ** len(widths)) ** 2
        head: list[nn.Module] = [nn.Flatten()]
        if hidden:
            head += [nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            flat = hidden
        head.append(nn.Linear(flat, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register("resnet18")
def resnet18(num_classes: int) -> nn.Module:
    """The seed's teacher: 11.17M parameters."""
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), dropout=0.5, num_classes=num_classes)


@register("resnet20")
def resnet20(num_classes: int) -> nn.Module:
    """He et al.'s CIFAR ResNet-20 (0.27M): a teacher that trains on a laptop CPU."""
    return ResNet((3, 3, 3), (16, 32, 64), dropout=0.0, num_classes=num_classes)


@register("cnn3")
def cnn3(num_classes: int) -> nn.Module:
    """The seed's student: 0.62M parameters (620,810: its convs keep their bias before BN, as in the seed)."""
    return ConvNet((32, 64, 128), hidden=256, dropout=0.5, num_classes=num_classes, conv_bias=True)


@register("tinycnn")
def tinycnn(num_classes: int) -> nn.Module:
    """A 34K-parameter student for quick CPU sweeps and tests."""
    return ConvNet((16, 32, 64), hidden=None, dropout=0.0, num_classes=num_classes)
