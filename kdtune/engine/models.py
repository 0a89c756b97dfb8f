"""Models from anywhere: the registry, torchvision, timm, or any `module:callable`.

A model is named by a *spec*, a string that every config, preset, checkpoint
and teacher-store key carries:

    resnet18                  the registry below (the seed's teacher and student, CPU-sized models)
    torchvision:resnet18      a torchvision.models builder, untrained
    timm:resnet10t            a timm model, untrained (the optional extra kdtune[timm])
    mypackage.models:build    any importable callable taking `num_classes` and returning an nn.Module

    create_model("resnet18", num_classes=10)
    check_model("mypackage.models:build", num_classes=3, image_size=(40, 40))  # builds and runs it once

Two families cover the registry: `ResNet` (BasicBlock stages) and `ConvNet`
(conv-BN-ReLU-maxpool stages and a small classifier head).  All take images of
any size.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable

import torch
from torch import nn

from kdtune.engine.errors import UserError, first_line

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


def resolve_model(spec: str) -> Callable[[int], nn.Module]:
    """The builder `num_classes -> nn.Module` that `spec` names; a UserError naming the spec when there is none."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"invalid model {spec!r}: give a registry name, torchvision:NAME, timm:NAME or module:callable")
    prefix, colon, name = spec.partition(":")
    if not colon:
        if spec not in _REGISTRY:
            raise UserError(
                f"unknown model {spec!r}; known models: {', '.join(list_models())} "
                f"(or torchvision:NAME, timm:NAME, module:callable)"
            )
        return _REGISTRY[spec]
    if prefix == "torchvision":
        return _torchvision_builder(spec, name)
    if prefix == "timm":
        return _timm_builder(spec, name)
    target = _import_callable(spec, prefix, name)
    return lambda num_classes: target(num_classes=num_classes)


def check_model_name(spec: str) -> str:
    """`spec`, once it names a builder (a cheap check: nothing is built)."""
    resolve_model(spec)
    return spec


def create_model(spec: str, num_classes: int = NUM_CLASSES) -> nn.Module:
    builder = resolve_model(spec)
    try:
        model = builder(num_classes)
    except Exception as error:  # the user's code, or a builder that does not take num_classes
        raise UserError(f"model {spec!r} failed to build with num_classes={num_classes}: "
                        f"{type(error).__name__}: {first_line(error)}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def check_model(spec: str, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    """Build `spec` and run it once on a blank image: a model that cannot take the data fails here, in one line."""
    model = create_model(spec, num_classes).eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, *image_size))
    except Exception as error:
        raise UserError(f"model {spec!r} fails on a 3x{image_size[0]}x{image_size[1]} image: "
                        f"{type(error).__name__}: {first_line(error)}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"model {spec!r} returns {shape} for one image; expected logits of shape (1, {num_classes})")
    return model


def model_spec(model: str | Callable[..., nn.Module]) -> str:
    """The spec of a builder function or class (`module:qualname`), or a spec string unchanged.

    Specs, not objects, travel in configs and name teachers in the store, so a
    builder must be importable by that name (not a lambda, a local function or
    one defined in `__main__`, which Ray's workers cannot import).
    """
    if isinstance(model, str):
        return check_model_name(model)
    module, qualname = getattr(model, "__module__", None), getattr(model, "__qualname__", "")
    spec = f"{module}:{qualname}"
    if module in (None, "__main__") or "<" in qualname:
        raise UserError(f"model builder {spec} cannot be imported by name; define it at the top level of a module file")
    if _import_callable(spec, module, qualname) is not model:
        raise UserError(f"model builder {spec} is not what that name imports")
    return spec


def storage_name(spec: str) -> str:
    """`spec` as a file-name part: 'torchvision:resnet18' -> 'torchvision_resnet18'."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in spec)


def _torchvision_builder(spec: str, name: str) -> Callable[[int], nn.Module]:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)  # classification models only
    if name not in known:
        raise UserError(f"unknown model {spec!r}: torchvision has no classification model {name!r} (see "
                        f"torchvision.models.list_models())")
    return lambda num_classes: torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def _timm_builder(spec: str, name: str) -> Callable[[int], nn.Module]:
    try:
        import timm
    except ImportError:
        raise UserError(f"model {spec!r} needs timm, which is not installed: pip install 'kdtune[timm]'") from None
    if not timm.is_model(name):
        raise UserError(f"unknown model {spec!r}: timm has no model {name!r} (see timm.list_models())")
    return lambda num_classes: timm.create_model(name, pretrained=False, num_classes=num_classes)


def _import_callable(spec: str, module_name: str, attr_path: str) -> Callable:
    if not module_name or not attr_path:
        raise UserError(f"invalid model {spec!r}: expected package.module:callable")
    # Ray's workers on this machine search the driver's current directory; the driver does the same.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        target = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise UserError(f"model {spec!r}: no module named {module_name!r} (on a cluster, pass its folder with "
                            f"--py-modules or --working-dir)") from None
        raise UserError(f"model {spec!r}: importing {module_name!r} failed: {first_line(error)}") from None
    except Exception as error:  # the user's module raised while importing
        raise UserError(f"model {spec!r}: importing {module_name!r} failed: "
                        f"{type(error).__name__}: {first_line(error)}") from None
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise UserError(f"model {spec!r}: module {module_name!r} has no attribute {attr_path!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UserError(f"model {spec!r}: {attr_path!r} is a {type(target).__name__}, not a callable")
    return target


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv_bn(c_in: int, c_out: int, stride: int = 1, bias: bool = False) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=bias), nn.BatchNorm2d(c_out)]


class GlobalAvgPool(nn.Module):
    """(B, C, H, W) -> (B, C): the mean over the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class GridPool(nn.Module):
    """Average-pools to a `grid` x `grid` map; the identity when the map is that size already (a 32x32 input),
    so that the usual case runs no pooling kernel at all."""

    def __init__(self, grid: int):
        super().__init__()
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (self.grid, self.grid):
            return x
        return adaptive_avg_pool2d(x, self.grid)


# ----------------------------------------------------------------------------- deterministic pooling on CUDA
# nn.functional.adaptive_avg_pool2d has no deterministic CUDA backward (torch.use_deterministic_algorithms
# refuses it), except to a 1x1 output, which PyTorch computes as a mean.  Its windows' means are also two
# matrix products, whose backward is deterministic: that form is used on CUDA under deterministic algorithms.


def adaptive_avg_pool2d(x: torch.Tensor, size) -> torch.Tensor:
    """nn.functional.adaptive_avg_pool2d, as window_means on CUDA under deterministic algorithms."""
    if x.is_cuda and torch.are_deterministic_algorithms_enabled():
        return window_means(x, size)
    return nn.functional.adaptive_avg_pool2d(x, size)


def window_means(x: torch.Tensor, size) -> torch.Tensor:
    """(..., H, W) -> (..., h, w): adaptive average pooling's windows (output row i averages input rows
    floor(i H / h) to ceil((i + 1) H / h)) as `rows @ x @ cols^T`.  `size` as nn.AdaptiveAvgPool2d takes it
    (None keeps that side)."""
    h, w = (size, size) if isinstance(size, int) else size
    height, width = x.shape[-2:]
    rows = _window_matrix(height if h is None else h, height, x)
    cols = _window_matrix(width if w is None else w, width, x)
    return torch.einsum("ih,...hw,jw->...ij", rows, x, cols)


def _window_matrix(out: int, n: int, like: torch.Tensor) -> torch.Tensor:
    """(out, n): row i holds 1/len over window i's inputs.  Built from aranges on the device: no host copy."""
    i = torch.arange(out, device=like.device)
    start, end = (i * n) // out, ((i + 1) * n + out - 1) // out
    j = torch.arange(n, device=like.device)
    inside = (j >= start[:, None]) & (j < end[:, None])
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


class AdaptiveAvgPool(nn.Module):
    """nn.AdaptiveAvgPool2d through adaptive_avg_pool2d: what deterministic_pools puts in its place."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool2d(x, self.output_size)


def deterministic_pools(model: nn.Module) -> nn.Module:
    """Replace, in place, every nn.AdaptiveAvgPool2d to more than 1x1 (torchvision's VGG and AlexNet pool to
    7x7 and 6x6) by an AdaptiveAvgPool, so that --deterministic trains the model on a GPU.  Pools hold no state:
    state dicts and checkpoints are unchanged.  A model that calls the functional form itself still stops
    with PyTorch's error."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size not in (1, (1, 1)):
                setattr(parent, name, AdaptiveAvgPool(child.output_size))
    return model


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
        self.head = nn.Sequential(GlobalAvgPool(), nn.Dropout(dropout), nn.Linear(c_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ConvNet(nn.Module):
    """Stages of conv3x3-BN-ReLU-maxpool(2), pool to a fixed grid, flatten, optional hidden fc with dropout, fc."""

    def __init__(
        self, widths: tuple[int, ...], hidden: int | None, dropout: float, num_classes: int, conv_bias: bool = False
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for width in widths:
            layers += [*_conv_bn(c_in, width, bias=conv_bias), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = width
        # The classifier sees the grid a 32x32 image leaves (4x4 after three stages); other sizes are
        # average-pooled to it, which at 32x32 is the identity.  Last in `features`: no parameter name moves.
        grid = 32 // 2 ** len(widths)
        self.features = nn.Sequential(*layers, GridPool(grid))
        flat = c_in * grid**2
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
