"""How fast a model trains and evaluates as kdtune's loop runs it, and the precision that makes it fastest.

`measure` times a few steps (the dry run's estimate uses it); `choose_precision` decides what `--precision
auto` means for one model on one device: bf16 autocast on CUDA, as always; on a CPU, bf16 where the processor
computes it natively and a short side-by-side measurement shows it faster for this model, else fp32.  The
teacher's training, its logit cache and the students each decide for their own model and step.

A choice is remembered per processor, model, batch, threads and PyTorch version in the cache folder: a
measurement on a busy machine could come out the other way, and two runs of one command must train in the
same precision to give the same numbers.  Delete `precision-choices.json` there to measure again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kdtune.engine.atomic import save_json
from kdtune.engine.data import augmentation_params, cache_dir, normalize
from kdtune.engine.device import autocast, device_name, native_bf16, prepare
from kdtune.engine.train import training_views

# bf16 must beat fp32 by this much to be chosen: a closer race is within the measurement's own noise, and fp32
# changes no number.
BF16_MARGIN = 1.05


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # "bf16" or "fp32"
    speedup: float | None  # bf16's images/s over fp32's, measured side by side; None: not measured
    why: str

    def to_dict(self) -> dict:
        return {"precision": self.precision, "speedup": self.speedup, "why": self.why}


def choose_precision(model: torch.nn.Module, batch_size: int, splits, device: torch.device, threads: int | None,
                     step: str = "train", remember: Path | None = None) -> PrecisionChoice:
    """What `--precision auto` means for `model`'s `step` ("train" or "eval") on `device`; a measured choice is
    read from and written to `remember` (default: precision-choices.json in the cache folder)."""
    if device.type == "cuda":
        if native_bf16(device):
            return PrecisionChoice("bf16", None, "bf16 autocast on a GPU with native bf16")
        return PrecisionChoice("fp32", None, "this GPU has no native bf16 (before Ampere)")
    if not native_bf16(device):
        return PrecisionChoice("fp32", None, "this CPU has no native bf16")
    key = _choice_key(model, batch_size, splits, device, threads, step)
    which = 0 if step == "train" else 1

    def ratio() -> float:
        fp32 = measure(model, batch_size, splits, device, threads, precision="fp32")[which]
        bf16 = measure(model, batch_size, splits, device, threads, precision="bf16")[which]
        return round(bf16 / fp32, 4)

    value, earlier = remembered(remember or cache_dir() / "precision-choices.json", key, ratio)
    return _decide(float(value), "measured earlier on this machine" if earlier else "measured here")


def remembered(path: Path, key: str, measure_it):
    """(value, whether it was remembered): `path`'s JSON entry `key`, else `measure_it()` written there (a write
    that fails leaves it unremembered: the next run measures again)."""
    known = _read_choices(path)
    if key in known:
        return known[key], True
    value = measure_it()
    try:
        save_json(path, {**_read_choices(path), key: value})
    except OSError:
        pass
    return value, False


def _decide(ratio: float, when: str) -> PrecisionChoice:
    if ratio >= BF16_MARGIN:
        return PrecisionChoice("bf16", ratio, f"{when}: {ratio:.2f}x fp32's images/s")
    return PrecisionChoice("fp32", ratio, f"{when}: bf16 only {ratio:.2f}x fp32's images/s")


def _choice_key(model: torch.nn.Module, batch_size: int, splits, device: torch.device, threads: int | None,
                step: str) -> str:
    parameters = sum(p.numel() for p in model.parameters())
    shape = f"{splits.num_classes}x{splits.image_size}"
    return (f"{device_name(device)}|torch {torch.__version__}|{type(model).__name__}:{parameters}|{shape}|"
            f"batch {batch_size}|threads {threads}|{step}")


def _read_choices(path: Path) -> dict:
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def measure(model: torch.nn.Module, batch_size: int, splits, device: torch.device, threads: int | None,
            steps: int = 3, precision: str = "auto") -> tuple[float, float]:
    """(training, evaluation) images/s of `model` on `device` with `threads` CPU threads in `precision`, timed as
    the loop runs them (a batch of `splits`' images augmented and normalised, then forward, backward and step;
    evaluation normalises and runs forward), a few steps after one warm-up step each."""

    before = torch.get_num_threads()
    if threads is not None and device.type == "cpu":
        torch.set_num_threads(max(1, threads))
    try:
        model = prepare(model, device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        n = min(batch_size, len(splits.train_labels))
        images, labels = splits.train_images[:n].to(device), splits.train_labels[:n].to(device)
        params = augmentation_params(n, 0, 0, splits.image_size).to(device)

        def train_step():
            views = training_views(images, params, splits)
            with autocast(precision, device):
                logits = model(views)
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        train_s = _timed(train_step, steps, device)
        model.eval()
        with torch.no_grad(), autocast(precision, device):
            eval_s = _timed(lambda: model(normalize(images, splits.mean, splits.std)), steps, device)
        return n / train_s, n / eval_s
    finally:
        torch.set_num_threads(before)


def _timed(step, steps: int, device: torch.device) -> float:
    step()  # warm-up: allocations, kernel selection
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / steps
