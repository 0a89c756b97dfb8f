"""Packed training: several students of one trial trained in one process, in lockstep.

A sweep trains many small students; one process (and one CUDA context) per student wastes most of
a device on start-up and idle time.  A *pack* trains its members together: every member finishes
epoch e before any starts e + 1, sharing the process, the data and the teacher-logit cache on the
device.  By default a pack is all seeds of one configuration, so a scheduler such as ASHA stops
configurations, never single seeds.

Members run one after another within each epoch, each exactly as it would run alone: every member
keeps its own random state (dropout), swapped in around its epoch, so a packed member reproduces
its unpacked run number for number.  Nothing here knows of Ray.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

import torch

from kdtune.engine.config import RunConfig, several_configurations
from kdtune.engine.data import Splits, cache_dir
from kdtune.engine.device import device_name
from kdtune.engine.stack import can_stack, choose_pack_mode, train_stacked
from kdtune.engine.train import TeacherSignal, TrainResult, training_epochs

# The stack must beat the loop by this much to be chosen: a closer race is within the measurement's noise,
# and the loop reproduces each member's lone run exactly.
STACK_MARGIN = 1.05
PROBE_STEPS = 3  # training steps each mode is timed over (after as many to warm up)

# on_epoch(per-member metrics, per-member checkpoint states), after every member finished the epoch: a member
# that trained no epoch this time (it diverged earlier) has metrics None and keeps its last state.
PackCallback = Callable[[list[dict | None], list[dict]], None]


def train_pack(
    configs: list[RunConfig],
    splits: Splits,
    device: torch.device,
    teacher: TeacherSignal | None = None,
    on_epoch: PackCallback | None = None,
    resume: list[dict] | None = None,
    test_every: int = 0,
    mode: str = "loop",
    compiled: bool = False,
) -> list[TrainResult]:
    """Train every config in lockstep; `resume` holds one checkpoint state per member (from on_epoch).

    A pack of one configuration's seeds stops after an epoch in which any member diverged: the configuration
    has failed.  In a pack of several configurations (--pack N) a diverged member stops alone and the others,
    strangers to it, train on.
    `mode` "stack" trains the members as one batched computation (kdtune.engine.stack), "auto" stacks where
    that was measured faster (`decide_pack_mode`); "loop" runs them one after another, as below, each
    member's forward through torch.compile when `compiled` (kdtune.engine.train.training_epochs).
    """
    if decide_pack_mode(mode, configs, splits, device, teacher).mode == "stack":
        return train_stacked(configs, splits, device, teacher, on_epoch, resume, test_every)
    if resume is not None and len(resume) != len(configs):
        raise ValueError(f"checkpoint holds {len(resume)} members, the pack has {len(configs)}")
    splits = splits.to(device)  # once, for every member
    members = [
        training_epochs(config, splits, device, teacher,  # a no-KD member's fidelity is measured against it too
                        resume=resume[i] if resume else None, test_every=test_every, compiled=compiled)
        for i, config in enumerate(configs)
    ]
    rng = [None] * len(members)  # each member's own random state, between its epochs
    results: list[TrainResult | None] = [None] * len(members)
    states: list[dict | None] = [None] * len(members)  # each member's last checkpoint state
    strangers = several_configurations(configs)
    while not all(results):
        metrics: list[dict | None] = [None] * len(members)
        for i, member in enumerate(members):
            if results[i] is not None:
                continue
            with _own_rng(rng, i, device):
                try:
                    metrics[i], checkpoint_state = next(member)
                    # Taken now: the state must hold this member's random state, not the next member's.
                    states[i] = checkpoint_state()
                except StopIteration as done:
                    results[i] = done.value
        if any(m is not None for m in metrics) and on_epoch is not None:
            on_epoch(metrics, states)
        if not strangers and any(m is not None and m["diverged"] for m in metrics):
            for member in members:
                member.close()
            return [r for r in results if r is not None]
    return results


# ----------------------------------------------------------------------------- loop or stack, by measuring


@dataclass(frozen=True)
class PackModeChoice:
    mode: str  # "loop" or "stack"
    loop_images_per_s: float | None  # measured side by side on the trial's device; None: not measured
    stack_images_per_s: float | None
    why: str

    def metrics(self) -> dict:
        """What a trial reports of its choice, every epoch."""
        measured = {} if self.loop_images_per_s is None else {"pack_loop_images_per_s": self.loop_images_per_s,
                                                              "pack_stack_images_per_s": self.stack_images_per_s}
        return {"pack_mode": self.mode, **measured}


def decide_pack_mode(mode: str, configs: list[RunConfig], splits: Splits, device: torch.device,
                     teacher: TeacherSignal | None = None) -> PackModeChoice:
    """What `mode` means for this pack on `device`: "loop" and "stack" as named (`choose_pack_mode`); "auto"
    times a few training steps of each on the device and its model (`measure_pack_modes`; remembered per
    device, model, pack size and batch in the cache folder, so one experiment's trials measure once) and
    takes the stack only where it is STACK_MARGIN faster.  A pack of one, or one that cannot stack, loops."""
    if mode != "auto":
        return PackModeChoice(choose_pack_mode(mode, configs, device), None, None, f"pack mode {mode}, as asked")
    if len(configs) < 2:
        return PackModeChoice("loop", None, None, "a pack of one: nothing to stack")
    reason = can_stack(configs)
    if reason is not None:
        return PackModeChoice("loop", None, None, f"cannot stack: {reason}")
    from kdtune.engine.speed import remembered

    config = configs[0]
    key = (f"{device_name(device)}|{device.type}|torch {torch.__version__}|{config.model}|{len(configs)} members|"
           f"batch {config.effective_batch_size}|{config.precision}|{splits.num_classes}x{splits.image_size}|"
           f"threads {torch.get_num_threads()}")
    timings, earlier = remembered(cache_dir() / "pack-modes.json", key,
                                  lambda: measure_pack_modes(configs, splits, device, teacher))
    loop, stack = timings["loop"], timings["stack"]
    when = "measured earlier on this device" if earlier else "measured here"
    if stack >= STACK_MARGIN * loop:
        return PackModeChoice("stack", loop, stack, f"{when}: the stack {stack / loop:.2f}x the loop's images/s")
    return PackModeChoice("loop", loop, stack, f"{when}: the stack only {stack / loop:.2f}x the loop's images/s")


def measure_pack_modes(configs: list[RunConfig], splits: Splits, device: torch.device,
                       teacher: TeacherSignal | None = None, steps: int = PROBE_STEPS) -> dict:
    """{"loop": images/s, "stack": images/s} of `configs` trained as each, side by side on `device`: each mode
    trains one epoch of `steps` batches of the first training images twice, the second timed (the first
    warms allocations and kernel choices up).  Nothing is kept: the real training starts from its seeds."""
    batch = min(configs[0].effective_batch_size, len(splits.train_labels))
    n = min(len(splits.train_labels), steps * batch)
    probe = dataclasses.replace(splits, train_images=splits.train_images[:n], train_labels=splits.train_labels[:n],
                                val_images=splits.val_images[:batch], val_labels=splits.val_labels[:batch],
                                test_images=splits.test_images[:batch], test_labels=splits.test_labels[:batch])
    short = [dataclasses.replace(c, epochs=1) for c in configs]
    signal = None if teacher is None else _ProbeTeacher(teacher, batch)
    rates = {}
    before = torch.get_rng_state()
    try:
        for mode in ("loop", "stack"):
            for timed in (False, True):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                started = time.perf_counter()
                train_pack(short, probe, device, signal, mode=mode)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if timed:
                    rates[mode] = round(n * len(configs) / (time.perf_counter() - started), 1)
    finally:
        torch.set_rng_state(before)
    return rates


class _ProbeTeacher:
    """A teacher signal for `measure_pack_modes`' slice of the data: the first `rows` validation and test logits."""

    def __init__(self, teacher: TeacherSignal, rows: int):
        self.teacher = teacher
        if hasattr(teacher, "aug_seed"):
            self.aug_seed = teacher.aug_seed
        self.val_logits, self.test_logits = teacher.val_logits[:rows], teacher.test_logits[:rows]

    def train_logits(self, epoch, idx, views):
        return self.teacher.train_logits(epoch, idx, views)

    def true_class_probability(self, labels, temperature, epochs):
        return self.teacher.true_class_probability(labels, temperature, epochs)


@contextlib.contextmanager
def _own_rng(states: list, i: int, device: torch.device):
    """Run member i with its own CPU (and CUDA) random state; a member's first epoch seeds its own."""
    if states[i] is not None:
        torch.set_rng_state(states[i][0])
        if states[i][1] is not None:
            torch.cuda.set_rng_state(states[i][1], device)
    try:
        yield
    finally:
        states[i] = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def member_names(seeds: list[int] | None, count: int) -> list[str]:
    """What a pack's report calls its members (`<name>/<metric>`), and what the results unpack: `s<seed>` in a
    pack of one configuration's seeds, `m<i>` in a pack of any configurations (`seeds` None)."""
    return [f"m{i}" for i in range(count)] if seeds is None else [f"s{seed}" for seed in seeds]


def pack_metrics(metrics: list[dict], configs: list[RunConfig], names: list[str] | None = None) -> dict:
    """One epoch's report of a pack: the mean over members of every metric all of them measured (what a
    scheduler sees), `diverged` if any member diverged, and each member's own metrics as `<name>/<metric>`,
    where a member's name is `s<seed>` (a configuration's seeds) unless `names` are given (see member_names)."""
    names = names or member_names([config.seed for config in configs], len(configs))
    trained = [(m, name) for m, name in zip(metrics, names) if m is not None]
    shared = set.intersection(*(set(m) for m, _ in trained))
    report = {}
    for key in sorted(shared):
        values = [m[key] for m, _ in trained]
        if key == "diverged":
            report[key] = any(values)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            report[key] = values[0] if key == "epoch" else float(sum(values) / len(values))
    for m, name in trained:
        report.update({f"{name}/{key}": value for key, value in m.items()})
    return report
