"""Where a network runs and in what precision: shared by the training loop, the teacher and the benchmarks."""

from __future__ import annotations

import contextlib
import os
import platform

import torch
from torch import nn

from kdtune.engine.errors import UserError
from kdtune.engine.models import deterministic_pools


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"invalid device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"invalid device {name!r}: use auto, cpu, cuda or cuda:N")
    return device


# cuBLAS needs a fixed workspace to be deterministic (PyTorch's reproducibility notes).
CUBLAS_DETERMINISTIC = ":4096:8"


def configure(device: torch.device, deterministic: bool = False) -> None:
    """Process-wide settings for training on `device`: on CUDA, cuDNN picks its fastest kernels by measuring
    (`benchmark`), unless `deterministic`, which asks every operation for a deterministic implementation (one
    without refuses to run) at some cost in speed.  On a CPU kdtune's numbers are reproducible either way."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
    torch.use_deterministic_algorithms(deterministic)


def uses_bf16(precision: str, device: torch.device) -> bool:
    """auto = bf16 on a GPU that computes it natively (fast and accurate there), else fp32 (on a CPU, unless
    measured faster: kdtune.engine.speed.choose_precision)."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda" and native_bf16(device))


# The first CUDA architecture (Ampere) with bf16 tensor cores; older GPUs emulate bf16 (cuDNN has no bf16
# convolutions there), and torch.cuda.is_bf16_supported() counts the emulation.
CUDA_BF16_CAPABILITY = (8, 0)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively: an Ampere or later GPU, or a CPU with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= CUDA_BF16_CAPABILITY
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:  # not Linux: no way to tell here, so no bf16 by default
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(precision: str, device: torch.device):
    if uses_bf16(precision, device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    # channels_last: cuDNN's fastest NHWC kernels, and on the CPU oneDNN trains 20-60% faster in it
    # (measured with torch 2.14 on AVX-512; benchmarks/kd_throughput.py).
    if device.type == "cuda" and torch.are_deterministic_algorithms_enabled():
        deterministic_pools(model)
    return model.to(device=device, memory_format=torch.channels_last)


def device_name(device: torch.device) -> str:
    """The GPU's name, else the CPU's, for benchmark reports."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux names the model here; platform.processor() there is only the architecture
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    """The 1-minute load average: other processes competing for the cores while something is timed."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None
