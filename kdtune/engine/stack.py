"""Stacked packs: a pack's students trained as one batched computation with `torch.func`.

A pack (kdtune.engine.pack) trains N students in lockstep; its loop runs them one after another, each
exactly as alone.  Small students cannot fill a GPU one at a time, so here, as in HFTA (Wang et al.,
MLSys 2021), the N members become one computation: their parameters and buffers are stacked along a
new leading dimension (`torch.func.stack_module_state`), and one `vmap` of `functional_call` over that
dimension runs every member's forward on its own batch, (N, B, C, H, W) -> (N, B, classes).  vmap
turns the members' convolutions into one grouped convolution: one kernel launch for N students.

What stays per member:

* initialisation and data order: member i is built after `torch.manual_seed(seed_i)`, as the loop
  builds it, and visits the images in `epoch_order(n, seed_i, epoch)`; all members share aug_seed, so
  the augmented view of an image is the same for all of them and one teacher-logit cache serves all;
* temperature and alpha, as (N,) tensors in `stacked_kd_loss_terms`;
* BatchNorm running statistics: the buffers are stacked like the parameters and passed through vmap
  batched, so BatchNorm's in-place running-stat update writes each member's own slice (the torch.func
  "Patching Batch Norm" page's problem is an *unbatched* buffer updated from a batched input);
* dropout: `randomness="different"` draws an independent mask per member, all from the one global
  generator.  Members with dropout are therefore statistically, not bitwise, their loop runs;
* the optimiser: torch.optim runs on the stacked leaf tensors.  That is exact because every member has
  the same learning-rate schedule and Adam and SGD (momentum, Nesterov, L2 weight decay) are
  element-wise, so no member's numbers touch another's (tests/test_stack.py checks it).

Hence the limits (`can_stack`): one architecture, recipe, epoch count, batch size, aug_seed, precision
and label smoothing per stack, and method "kd" only (ls and ctkd change the loss).  Without dropout a
stacked member matches its loop run to float rounding: vmap's grouped convolutions sum in another
order.  Checkpoint states are the loop's, one per member, so the loop trainer can resume any member
alone, and a stacked pack resumes from its own states or the loop's.

On the CPU the batched computation is slower than the loop (3-6x in earlier measurements; cnn3 with one
thread, 3.2x at N=4 and 3.5x at N=2: benchmarks/population.py); whether it pays on a GPU depends on the
device and the model, so pack mode auto measures both on the trial's own device
(kdtune.engine.pack.decide_pack_mode).  Nothing here knows of Ray.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from kdtune.engine.config import RunConfig, several_configurations
from kdtune.engine.data import Splits, augmentation_params, epoch_order, normalize
from kdtune.engine.device import autocast, prepare
from kdtune.engine.errors import UserError
from kdtune.engine.metrics import agreement, classification_metrics, fidelity_metrics
from kdtune.engine.models import create_model
from kdtune.engine.train import (
    TeacherSignal,
    TrainResult,
    build_optimizer,
    check_teacher,
    load_optimizer_state,
    lr_factor,
    training_views,
)

PACK_MODES = ("auto", "loop", "stack")
MEMBER_FIELDS = ("seed", "temperature", "alpha")  # what members of one stack may differ in
STACKABLE_METHOD = "kd"
EVAL_MEMBER_IMAGES = 8192  # images x members per evaluation forward: the loop's 1024 images, shared out

PackCallback = Callable[[list[dict], list[dict]], None]  # as kdtune.engine.pack: (per-member metrics, states)


# ----------------------------------------------------------------------------- choosing a pack's mode


def can_stack(configs: list[RunConfig]) -> str | None:
    """None when `configs` can train as one stack, else the reason they cannot, in one line."""
    if not configs:
        return "the pack has no members"
    for config in configs:
        method = getattr(config, "method", "kd")
        if method != STACKABLE_METHOD:
            return f"member seed {config.seed} uses method {method!r}; only {STACKABLE_METHOD!r} stacks"
    first = _shared_settings(configs[0])
    for config in configs[1:]:
        other = _shared_settings(config)
        for name in first:
            if other[name] != first[name]:
                return (f"members differ in {name} ({first[name]!r} vs {other[name]!r}); a stack shares everything "
                        f"but {', '.join(MEMBER_FIELDS)}")
    return None


def _shared_settings(config: RunConfig) -> dict:
    """The settings every member of a stack must share; lr and batch size as they take effect (None = recipe's)."""
    settings = {k: v for k, v in config.to_dict().items() if k not in MEMBER_FIELDS}
    settings.update(lr=config.effective_lr, batch_size=config.effective_batch_size)
    return settings


def choose_pack_mode(mode: str, configs: list[RunConfig], device: torch.device) -> str:
    """"loop" or "stack" for `mode` auto, loop or stack, without measuring: auto is the loop here (the
    measured choice is kdtune.engine.pack.decide_pack_mode's).  stack on a pack that cannot stack is a
    UserError."""
    if mode not in PACK_MODES:
        raise UserError(f"invalid pack mode {mode!r}: use one of {', '.join(PACK_MODES)}")
    if mode != "stack":
        return "loop"
    reason = can_stack(configs)
    if reason is not None:
        raise UserError(f"cannot stack this pack: {reason}; use pack mode loop or auto")
    return "stack"


# ----------------------------------------------------------------------------- the loss


def stacked_kd_loss_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: torch.Tensor,
    alpha: torch.Tensor,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """kdtune.engine.losses.kd_loss_terms for N members at once: logits (N, B, classes), targets (N, B), temperature
    and alpha (N,).  Returns (total, ce, kd), each (N,):

        total = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

    with the KL averaged over each member's batch.  A member with alpha = 0 gets CE alone and kd = 0 (it needs
    no teacher; `teacher_logits` None means no member has one)."""
    n, b, classes = student_logits.shape
    student = student_logits.float()
    ce = F.cross_entropy(student.reshape(n * b, classes), targets.reshape(n * b), reduction="none",
                         label_smoothing=label_smoothing).view(n, b).mean(1)
    if teacher_logits is None:
        return ce, ce, torch.zeros_like(ce)
    t = temperature.view(n, 1, 1)
    log_p_student = F.log_softmax(student / t, dim=2)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=2)
    # "batchmean": each member's sum over its (B, classes) block, over B
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).flatten(1).sum(1) / b
    distilling = alpha > 0
    kd = torch.where(distilling, kl * temperature**2, torch.zeros_like(kl))
    total = torch.where(distilling, alpha * kd + (1 - alpha) * ce, ce)
    return total, ce, kd


def _member_tensor(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)


# ----------------------------------------------------------------------------- the stacked members


class Stack:
    """N members of one architecture as stacked tensors, (N, ...) per parameter and buffer, run with vmap."""

    def __init__(self, configs: list[RunConfig], num_classes: int, device: torch.device):
        models = []
        for config in configs:
            torch.manual_seed(config.seed)  # each member's own initialisation, exactly as training_epochs builds it
            models.append(prepare(create_model(config.model, num_classes), device))
        self.size = len(models)
        self.keys = list(models[0].state_dict())  # one member's checkpoint layout
        self.params, self.buffers = stack_module_state(models)  # leaves: params require grad, buffers do not
        # The architecture alone: functional_call swaps the stacked slices in for its (meta) tensors.
        self.base = copy.deepcopy(models[0]).to("meta")
        self._template = (configs[0].model, num_classes, device)

        def member_forward(params, buffers, images):
            return functional_call(self.base, (params, buffers), (images,))

        self._own_batches = vmap(member_forward, in_dims=(0, 0, 0), randomness="different")
        self._shared_batch = vmap(member_forward, in_dims=(0, 0, None), randomness="different")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Training forward: images (N, B, C, H, W), member i's batch at [i], -> logits (N, B, classes)."""
        self.base.train()
        return self._own_batches(self.params, self.buffers, images)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, splits: Splits, device: torch.device, precision: str) -> torch.Tensor:
        """kdtune.engine.train.predict for every member: (N, n, classes) float32 logits of un-augmented uint8 images."""
        self.base.eval()
        chunk = max(1, EVAL_MEMBER_IMAGES // self.size)
        out = []
        with autocast(precision, device):
            for start in range(0, len(images), chunk):
                batch = normalize(images[start : start + chunk].to(device), splits.mean, splits.std)
                out.append(self._shared_batch(self.params, self.buffers, batch).float())
        self.base.train()
        return torch.cat(out, dim=1)

    def parameters(self):
        """The stacked leaves, in the order of one member's `parameters()`: what build_optimizer steps."""
        return iter(self.params.values())

    def member_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Member i's `state_dict()`, as CPU copies."""
        stacked = {**self.params, **self.buffers}
        return {k: stacked[k][i].detach().cpu().clone() for k in self.keys}

    @torch.no_grad()
    def load_member_state_dicts(self, states: list[dict[str, torch.Tensor]]) -> None:
        for name, tensor in {**self.params, **self.buffers}.items():
            tensor.copy_(torch.stack([state[name] for state in states]))

    def member_model(self, i: int) -> nn.Module:
        """Member i as an ordinary module on the stack's device, in train mode (what `train` returns)."""
        model_name, num_classes, device = self._template
        model = prepare(create_model(model_name, num_classes), device)
        model.load_state_dict(self.member_state_dict(i))
        return model


# ----------------------------------------------------------------------------- optimiser state per member


def member_optimizer_state(state: dict, i: int) -> dict:
    """Member i's slice of a stacked optimiser's `state_dict()`: what the loop's optimiser would hold.

    Per-parameter tensors (Adam's moments, SGD's momentum) are sliced; scalars (Adam's step) are shared."""
    return {
        "state": {index: {name: _slice(value, i) for name, value in entry.items()}
                  for index, entry in state["state"].items()},
        "param_groups": copy.deepcopy(state["param_groups"]),
    }


def stack_optimizer_states(states: list[dict]) -> dict:
    """The inverse of `member_optimizer_state`: one stacked optimiser state from N members' states."""
    first = states[0]
    stacked = {}
    for index, entry in first["state"].items():
        stacked[index] = {
            name: torch.stack([s["state"][index][name] for s in states]) if _per_parameter(value) else value
            for name, value in entry.items()
        }
    return {"state": stacked, "param_groups": copy.deepcopy(first["param_groups"])}


def _per_parameter(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0


def _slice(value, i: int):
    if _per_parameter(value):
        return value[i].detach().cpu().clone()
    return value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)


# ----------------------------------------------------------------------------- the loop


def train_stacked(
    configs: list[RunConfig],
    splits: Splits,
    device: torch.device,
    teacher: TeacherSignal | None = None,
    on_epoch: PackCallback | None = None,
    resume: list[dict] | None = None,
    test_every: int = 0,
) -> list[TrainResult]:
    """`kdtune.engine.pack.train_pack` as one stacked computation: the same arguments, callback and results.

    `resume` holds one checkpoint state per member, from this trainer's or the loop's on_epoch, all after
    the same epoch.  As the loop pack, a pack of one configuration's seeds stops after an epoch in which any
    member diverged, and then returns no results (no member finished); in a pack of several configurations a
    diverged member stops alone: the stack still carries it (its own parameters, gradients and optimizer
    state, apart from the others'), but it reports no more epochs and its results end where it diverged."""
    reason = can_stack(configs)
    if reason is not None:
        raise UserError(f"cannot stack this pack: {reason}")
    if resume is not None and len(resume) != len(configs):
        raise ValueError(f"checkpoint holds {len(resume)} members, the pack has {len(configs)}")
    config = configs[0]  # everything but seed, T and alpha is shared
    distilling = [c.alpha > 0 for c in configs]
    for member in configs:
        check_teacher(member, teacher)  # the loop's checks, for every member
    splits = splits.to(device)
    stack = Stack(configs, splits.num_classes, device)
    optimizer = build_optimizer(stack, config)
    n = len(splits.train_labels)
    batch = min(config.effective_batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, config))
    histories: list[list[dict]] = [[] for _ in configs]
    if resume is not None:
        histories = _restore(resume, stack, optimizer, scheduler, device)
    temperature = _member_tensor([c.temperature for c in configs], device)
    alpha = _member_tensor([c.alpha for c in configs], device)
    signal = teacher if any(distilling) else None

    def checkpoint_state(i: int) -> dict:
        # The loop's layout (kdtune.engine.train.training_epochs), so the loop can resume this member alone.
        state = {
            "model": stack.member_state_dict(i),
            "optimizer": member_optimizer_state(optimizer.state_dict(), i),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),  # the one generator every member's dropout drew from
            "history": list(histories[i]),
            "config": configs[i].to_dict(),
        }
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(device)
        return state

    strangers = several_configurations(configs)
    stopped = {i for i, history in enumerate(histories) if history and history[-1]["diverged"]}
    states: list[dict | None] = [None] * len(configs)
    for epoch in range(max(len(h) for h in histories), config.epochs):
        started = time.perf_counter()
        losses = _train_epoch(stack, optimizer, scheduler, splits, configs, device, signal, epoch, batch,
                              temperature, alpha)
        train_seconds = time.perf_counter() - started
        last = epoch + 1 == config.epochs
        evaluated = _evaluate(stack, splits, device, config.precision, [teacher] * len(configs),
                              test=last or bool(test_every and (epoch + 1) % test_every == 0))
        epoch_seconds = time.perf_counter() - started
        metrics: list[dict | None] = [None] * len(configs)
        for i, member_losses in enumerate(losses):
            if i in stopped:
                continue
            m = {"epoch": epoch + 1, **member_losses, "lr": optimizer.param_groups[0]["lr"], **evaluated[i]}
            # Every member's n images were trained in the same train_seconds, side by side.
            m.update(epoch_s=epoch_seconds, images_per_s=n / train_seconds,
                     diverged=not math.isfinite(member_losses["train_loss"]))
            histories[i].append(m)
            metrics[i] = m
            states[i] = checkpoint_state(i)
        if on_epoch is not None:
            on_epoch(metrics, [states[i] if states[i] is not None else checkpoint_state(i) for i in range(len(configs))])
        diverged = {i for i, m in enumerate(metrics) if m is not None and m["diverged"]}
        if diverged and not strangers:
            return []
        stopped |= diverged
        if len(stopped) == len(configs):
            break
    return [TrainResult(model=stack.member_model(i), history=histories[i]) for i in range(len(configs))]


def _restore(states: list[dict], stack: Stack, optimizer, scheduler, device: torch.device) -> list[list[dict]]:
    """Load N members' checkpoint states into the stack; return their histories."""
    # A member that diverged stopped there (a pack of several configurations): the others set the epoch.
    done = {len(s["history"]) for s in states if not (s["history"] and s["history"][-1]["diverged"])}
    if len(done) > 1:
        raise UserError(f"a stacked pack resumes from one epoch for all members; these checkpoints are after "
                        f"epochs {sorted(done)}")
    stack.load_member_state_dicts([s["model"] for s in states])
    load_optimizer_state(optimizer, stack_optimizer_states([s["optimizer"] for s in states]))
    scheduler.load_state_dict(states[0]["scheduler"])  # one schedule: every member's is the same
    # One generator for all: a stacked pack's members saved the same state; a loop pack's members differ, and
    # member 0's is as good as any (dropout masks are not the loop's anyway).
    torch.set_rng_state(states[0]["rng"])
    if "cuda_rng" in states[0] and device.type == "cuda":
        torch.cuda.set_rng_state(states[0]["cuda_rng"], device)
    return [list(s["history"]) for s in states]


def _train_epoch(stack: Stack, optimizer, scheduler, splits: Splits, configs: list[RunConfig], device,
                 teacher: TeacherSignal | None, epoch: int, batch: int, temperature: torch.Tensor,
                 alpha: torch.Tensor) -> list[dict]:
    config = configs[0]
    n = len(splits.train_labels)
    views = augmentation_params(n, config.aug_seed, epoch, splits.image_size).to(device)
    orders = torch.stack([epoch_order(n, c.seed, epoch) for c in configs]).to(device)  # (N, n): each member's own
    sums = torch.zeros(3, len(configs), device=device)  # total, ce, kd per member; on device, no sync per step
    for start in range(0, n, batch):
        idx = orders[:, start : start + batch]  # (N, B)
        flat = idx.reshape(-1)
        images = training_views(splits.train_images[flat], views[flat], splits)  # (N * B, C, H, W)
        with autocast(config.precision, device):
            student_logits = stack(images.unflatten(0, idx.shape))
        teacher_logits = None
        if teacher is not None:
            teacher_logits = teacher.train_logits(epoch, flat, images).unflatten(0, idx.shape)
        loss, ce, kd = stacked_kd_loss_terms(student_logits, teacher_logits, splits.train_labels[idx],
                                             temperature, alpha, config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        # Members share no parameter, so the gradient of the sum is each member's own loss's gradient.
        loss.sum().backward()
        optimizer.step()
        scheduler.step()
        sums += torch.stack([loss.detach(), ce.detach(), kd.detach()]) * idx.shape[1]
    totals, ces, kds = (sums / n).tolist()
    return [{"train_loss": t, "train_ce": c, "train_kd": k} for t, c, k in zip(totals, ces, kds)]


def _evaluate(stack: Stack, splits: Splits, device: torch.device, precision: str,
              teachers: list[TeacherSignal | None], test: bool) -> list[dict]:
    """kdtune.engine.train.evaluate for every member (validation always, as a pack does): one forward for all."""
    metrics = [{} for _ in teachers]
    val_logits = stack.predict(splits.val_images, splits, device, precision)
    for m, logits, teacher in zip(metrics, val_logits, teachers):
        m.update(classification_metrics(logits, splits.val_labels, "val"))
        if teacher is not None:
            m["agreement"] = agreement(logits, teacher.val_logits)
    if test:
        test_logits = stack.predict(splits.test_images, splits, device, precision)
        for m, logits, teacher in zip(metrics, test_logits, teachers):
            m.update(classification_metrics(logits, splits.test_labels, "test"))
            if teacher is not None:
                m.update(fidelity_metrics(logits, teacher.test_logits, splits.test_labels))
    return metrics
