"""One training loop for teacher, student and distillation.

`train(config, splits, device, teacher, on_epoch)` trains `config.model` and
returns its per-epoch metrics.  It knows nothing of Ray: the Tune trainable and
the CLI pass an `on_epoch(metrics, checkpoint_state)` callback to report,
checkpoint or print.  With alpha > 0 it needs a teacher signal, live
(`LiveTeacher`, the teacher network run on every batch) or cached
(`kdtune.engine.teacher.CachedTeacher`, logits precomputed for exactly these views).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import nn

from kdtune.engine.config import WARMUP_FRACTION, RunConfig
from kdtune.engine.data import Splits, augment, augmentation_params, epoch_order, normalize, within_class_donors
from kdtune.engine.device import autocast, prepare
from kdtune.engine.errors import UserError
from kdtune.engine.losses import (
    LearnedTemperature,
    ctkd_lambda,
    dkd_warmup,
    kd_loss_terms,
    true_class_probability,
    uniform_teacher_table,
)
from kdtune.engine.metrics import agreement, classification_metrics, fidelity_metrics
from kdtune.engine.models import create_model
from kdtune.engine.progress import Progress, progress_bar

EVAL_BATCH = 1024
EpochCallback = Callable[[dict, Callable[[], dict]], None]


# ----------------------------------------------------------------------------- inference


def training_views(images: torch.Tensor, params: torch.Tensor, splits: Splits) -> torch.Tensor:
    """The network input for uint8 training images augmented by `params`, normalised with `splits`' statistics:
    the loop and the logit cache both build their views here, so cached teacher logits are those of exactly
    the student's inputs."""
    views = normalize(augment(images, params), splits.mean, splits.std)
    return views.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict(
    model: nn.Module, images: torch.Tensor, splits: Splits, device: torch.device, precision: str
) -> torch.Tensor:
    """Logits (N, classes) in float32 for un-augmented uint8 images of `splits`, in eval mode, batched."""
    was_training = model.training
    model.eval()
    out = []
    with autocast(precision, device):
        for start in range(0, len(images), EVAL_BATCH):
            batch = images[start : start + EVAL_BATCH].to(device)
            out.append(model(normalize(batch, splits.mean, splits.std)).float())
    model.train(was_training)
    return torch.cat(out)


class TeacherSignal(Protocol):
    """What distillation needs from a teacher (and what fidelity is measured against: a no-KD student is
    evaluated against the teacher too)."""

    val_logits: torch.Tensor  # (n_val, classes): for student-teacher agreement
    test_logits: torch.Tensor  # (n_test, classes): for the fidelity diagnostics

    def train_logits(self, epoch: int, idx: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Teacher logits for training images `idx` as augmented in `epoch` (`views`, normalised)."""

    def true_class_probability(self, labels: torch.Tensor, temperature: float, epochs: int) -> float:
        """The teacher's mean softened true-class probability at `temperature` on the training images."""


class LiveTeacher:
    """Runs the frozen teacher on every training batch: exact but slow (see kdtune.engine.teacher for the cache)."""

    def __init__(self, model: nn.Module, splits: Splits, device: torch.device, precision: str):
        self.model = prepare(model, device).eval()
        self.device, self.precision, self.splits = device, precision, splits
        self.val_logits = predict(self.model, splits.val_images, splits, device, precision)
        self.test_logits = predict(self.model, splits.test_images, splits, device, precision)

    @torch.no_grad()
    def train_logits(self, epoch: int, idx: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        with autocast(self.precision, self.device):
            return self.model(views).float()

    def true_class_probability(self, labels: torch.Tensor, temperature: float, epochs: int) -> float:
        """Over the un-augmented training images (a live teacher keeps no views): one pass of the teacher."""
        logits = predict(self.model, self.splits.train_images, self.splits, self.device, self.precision)
        return true_class_probability(logits, labels.to(logits.device), temperature).mean().item()


# ----------------------------------------------------------------------------- optimisation


def build_optimizer(model: nn.Module, config: RunConfig, temperature: nn.Module | None = None) -> torch.optim.Optimizer:
    """The recipe's optimiser; a learned temperature (ctkd) is stepped by it too, as in the paper, without
    weight decay (which would pull its parameter, not T, towards zero)."""
    recipe = config.recipe_spec
    groups = [{"params": list(model.parameters())}]
    if temperature is not None:
        groups.append({"params": list(temperature.parameters()), "weight_decay": 0.0})
    # On CUDA one fused kernel updates every parameter, instead of a launch per parameter tensor and operation.
    fused = {"fused": True} if all(p.is_cuda for group in groups for p in group["params"]) else {}
    if recipe.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.effective_lr, weight_decay=recipe.weight_decay, **fused)
    return torch.optim.SGD(
        groups,
        lr=config.effective_lr,
        momentum=recipe.momentum,
        nesterov=True,
        weight_decay=recipe.weight_decay,
        **fused,
    )


# How an optimiser's update runs, chosen for the device it was built on (build_optimizer), not its state.
IMPLEMENTATION_OPTIONS = ("fused", "foreach", "capturable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """`optimizer.load_state_dict(state)`, keeping how `optimizer` was built to run here: a checkpoint written on
    another device type (a CPU trial resumed on a GPU) carries its own fused/foreach choice in each group, and
    PyTorch would take it, and place Adam's step counts by it."""
    groups = [{**saved, **{k: built[k] for k in IMPLEMENTATION_OPTIONS if k in built}}
              for saved, built in zip(state["param_groups"], optimizer.param_groups)]
    optimizer.load_state_dict({**state, "param_groups": groups})


def lr_factor(step: int, steps_per_epoch: int, config: RunConfig) -> float:
    """Learning-rate multiplier at optimiser step `step` (all schedules are stepped per batch)."""
    recipe = config.recipe_spec
    total = steps_per_epoch * config.epochs
    if recipe.schedule == "step":
        return recipe.gamma ** ((step // steps_per_epoch) // recipe.step_size)
    if recipe.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    # one-cycle: linear warm-up, then linear decay to zero
    warmup = max(1, int(WARMUP_FRACTION * total))
    return step / warmup if step < warmup else max(0.0, (total - step) / max(1, total - warmup))


# ----------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)

    @property
    def final(self) -> dict:
        return self.history[-1]


def train(
    config: RunConfig,
    splits: Splits,
    device: torch.device,
    teacher: TeacherSignal | None = None,
    on_epoch: EpochCallback | None = None,
    resume: dict | None = None,
    progress: Progress = False,
    desc: str = "train",
    val_every: int = 1,
    test_every: int = 0,
    compiled: bool = False,
) -> TrainResult:
    """Train `config.model` on `splits`, distilling from `teacher` when config.alpha > 0.

    Evaluating a small model costs as much as training it, so it happens only where it counts:
    validation every `val_every` epochs (early stopping and learning curves need it), the test set
    only after the last epoch, or every `test_every` epochs as well when asked (0: never before).
    Both always after the last epoch.

    `resume` is a `checkpoint_state()` dict from an earlier call with the same
    config: training continues after its last epoch and reproduces the
    uninterrupted run.  Stops early (metrics["diverged"] = True) when the
    training loss stops being finite.
    """
    epochs = training_epochs(config, splits, device, teacher, resume, progress, desc, val_every, test_every, compiled)
    while True:
        try:
            metrics, checkpoint_state = next(epochs)
        except StopIteration as done:
            return done.value
        if on_epoch is not None:
            on_epoch(metrics, checkpoint_state)


def training_epochs(
    config: RunConfig,
    splits: Splits,
    device: torch.device,
    teacher: TeacherSignal | None = None,
    resume: dict | None = None,
    progress: Progress = False,
    desc: str = "train",
    val_every: int = 1,
    test_every: int = 0,
    compiled: bool = False,
):
    """`train` one epoch at a time: yields (metrics, checkpoint_state) after each epoch and returns the
    TrainResult, so that a pack (kdtune.engine.pack) can advance several runs in lockstep.

    `compiled`: the training forward through torch.compile (on CUDA as CUDA graphs, mode "reduce-overhead",
    which records a second graph for the short last batch); numbers equal the eager step's to float rounding.
    The first epoch reports `compile_s`, its first step's time, compilation included."""
    check_teacher(config, teacher)
    splits = splits.to(device)
    torch.manual_seed(config.seed)
    model = prepare(create_model(config.model, splits.num_classes), device)
    learned = LearnedTemperature(config.temperature, *config.ctkd_range).to(device) if config.learns_temperature else None
    optimizer = build_optimizer(model, config, learned)
    n = len(splits.train_labels)
    batch = min(config.effective_batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, config))
    history: list[dict] = []
    if resume is not None:
        model.load_state_dict(resume["model"])
        if learned is not None:
            learned.load_state_dict(resume["temperature"])
        load_optimizer_state(optimizer, resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        torch.set_rng_state(resume["rng"])
        if "cuda_rng" in resume and device.type == "cuda":
            # Dropout on CUDA draws from the device's generator; a checkpoint from another device type has none to restore.
            torch.cuda.set_rng_state(resume["cuda_rng"], device)
        history = list(resume["history"])
        if history and history[-1].get("diverged"):
            return TrainResult(model=model, history=history)  # it stopped there; training on would be noise

    def checkpoint_state() -> dict:
        # Copies, not views: on CPU `.cpu()` and `state_dict()` alias the live tensors that later steps update.
        state = {
            "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "history": list(history),
            "config": config.to_dict(),
        }
        if learned is not None:
            state["temperature"] = {k: v.detach().cpu().clone() for k, v in learned.state_dict().items()}
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(device)  # this device's only: nodes differ in GPU count
        return state

    forward = model
    if compiled:
        forward = torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None)
    # kd-uniform's teacher gives the true class what the real one gives it on average, at this T.
    uniform = None
    if config.method == "kd-uniform" and config.alpha > 0:
        p = teacher.true_class_probability(splits.train_labels, config.temperature, config.epochs)
        uniform = uniform_teacher_table(splits.num_classes, p, config.temperature, device)
    bar = progress_bar(progress, steps_per_epoch * config.epochs, desc, initial=steps_per_epoch * len(history))
    for epoch in range(len(history), config.epochs):
        started = time.perf_counter()
        losses = _train_epoch(forward, optimizer, scheduler, splits, config, device, teacher, epoch, batch, bar,
                              learned, uniform, first_step=compiled and epoch == 0)
        train_seconds = time.perf_counter() - started
        metrics = {"epoch": epoch + 1, **losses, "lr": optimizer.param_groups[0]["lr"]}
        if learned is not None:
            metrics["learned_temperature"] = learned.value().detach().item()
        last = epoch + 1 == config.epochs
        metrics.update(evaluate(model, splits, device, config.precision, teacher,
                                val=last or (epoch + 1) % val_every == 0,
                                test=last or bool(test_every and (epoch + 1) % test_every == 0)))
        metrics["epoch_s"] = time.perf_counter() - started
        metrics["images_per_s"] = n / train_seconds
        metrics["diverged"] = not math.isfinite(losses["train_loss"])
        history.append(metrics)
        if bar is not None and "val_acc" in metrics:
            bar.set_description(f"{desc} (loss {losses['train_loss']:.3f}, val_acc {metrics['val_acc']:.3f})")
        yield metrics, checkpoint_state
        if metrics["diverged"]:
            break
    if bar is not None:
        bar.close()
    return TrainResult(model=model, history=history)


def check_teacher(config: RunConfig, teacher: TeacherSignal | None) -> None:
    """A distilled run needs a teacher, and cached logits must be of the run's own augmented views."""
    if config.alpha > 0 and teacher is None:
        raise UserError(f"alpha {config.alpha} > 0 needs a teacher; use alpha 0 to train without one")
    cached_seed = getattr(teacher, "aug_seed", config.aug_seed)
    if config.alpha > 0 and cached_seed != config.aug_seed:
        raise UserError(f"teacher logits were cached for aug_seed {cached_seed}, but the run uses {config.aug_seed}")


def _train_epoch(model, optimizer, scheduler, splits, config, device, teacher, epoch, batch, bar, learned=None,
                 uniform=None, first_step: bool = False) -> dict:
    """One epoch of training steps; `model` may be the compiled forward.  `first_step`: time the first step
    (a compiled forward compiles there) and report it as compile_s."""
    model.train()
    n = len(splits.train_labels)
    steps_per_epoch = math.ceil(n / batch)
    ramp_steps = config.effective_ctkd_ramp_epochs * steps_per_epoch
    warmup_steps = config.effective_dkd_warmup_epochs * steps_per_epoch
    views = augmentation_params(n, config.aug_seed, epoch, splits.image_size).to(device)
    order = epoch_order(n, config.seed, epoch).to(device)
    donors = within_class_donors(splits.train_labels, config.seed, epoch).to(device) \
        if config.method == "kd-shuffled" else None
    label_smoothing = config.label_smoothing
    started = time.perf_counter()
    sums = torch.zeros(3, device=device)  # total, ce, kd; summed on device to avoid a sync per step
    for start in range(0, n, batch):
        idx = order[start : start + batch]
        labels = splits.train_labels[idx]
        images = training_views(splits.train_images[idx], views[idx], splits)
        with autocast(config.precision, device):
            student_logits = model(images)
        teacher_logits = None
        if config.alpha > 0:
            teacher_logits = _teacher_says(teacher, config, splits, epoch, idx, images, views, labels, donors,
                                           uniform)
        # scheduler.last_epoch counts optimiser steps: every schedule is stepped per batch.
        temperature = learned(ctkd_lambda(scheduler.last_epoch, ramp_steps)) if learned is not None else config.temperature
        kd_scale = dkd_warmup(scheduler.last_epoch, warmup_steps) if config.method == "dkd" else 1.0
        loss, ce, kd = kd_loss_terms(student_logits, teacher_logits, labels, temperature, config.alpha,
                                     label_smoothing, config.method, config.dkd_beta, kd_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        sums += torch.stack([loss.detach(), ce.detach(), kd.detach()]) * len(idx)
        if first_step and start == 0:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            compile_s = time.perf_counter() - started
        if bar is not None:
            bar.update(1)
    total, ce, kd = (sums / n).tolist()
    return {"train_loss": total, "train_ce": ce, "train_kd": kd, **({"compile_s": compile_s} if first_step else {})}


def _teacher_says(teacher, config, splits, epoch, idx, images, views, labels, donors, uniform) -> torch.Tensor:
    """The teacher logits a batch is taught with: the teacher's for these views, another same-class image's
    (kd-shuffled: its view of this epoch), or the label-only teacher's (kd-uniform: rows of `uniform`)."""
    if config.method == "kd-uniform":
        return uniform[labels]
    if config.method == "kd-shuffled":
        given = donors[idx]
        # Only a live teacher looks at the views; a cache is indexed by image.
        given_views = training_views(splits.train_images[given], views[given], splits) \
            if isinstance(teacher, LiveTeacher) else None
        return teacher.train_logits(epoch, given, given_views)
    return teacher.train_logits(epoch, idx, images)


def evaluate(model: nn.Module, splits: Splits, device: torch.device, precision: str, teacher=None,
             val: bool = True, test: bool = True) -> dict:
    """Validation metrics (and top-1 agreement with the teacher, when there is one) and test metrics (with the
    fidelity diagnostics against the teacher, when there is one); each image set's logits computed once."""
    metrics = {}
    if val:
        val_logits = predict(model, splits.val_images, splits, device, precision)
        metrics.update(classification_metrics(val_logits, splits.val_labels.to(device), "val"))
        if teacher is not None:
            metrics["agreement"] = agreement(val_logits, teacher.val_logits)
    if test:
        test_logits = predict(model, splits.test_images, splits, device, precision)
        metrics.update(classification_metrics(test_logits, splits.test_labels.to(device), "test"))
        if teacher is not None:
            metrics.update(fidelity_metrics(test_logits, teacher.test_logits, splits.test_labels.to(device)))
    return metrics
