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
from typing import Callable

import torch

from kdtune.engine.config import RunConfig, several_configurations
from kdtune.engine.data import Splits
from kdtune.engine.stack import choose_pack_mode, train_stacked
from kdtune.engine.train import TeacherSignal, TrainResult, training_epochs

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
) -> list[TrainResult]:
    """Train every config in lockstep; `resume` holds one checkpoint state per member (from on_epoch).

    A pack of one configuration's seeds stops after an epoch in which any member diverged: the configuration
    has failed.  In a pack of several configurations (--pack N) a diverged member stops alone and the others,
    strangers to it, train on.
    `mode` "stack" trains the members as one batched computation (kdtune.engine.stack), "auto" stacks where
    that pays (kdtune.engine.stack.choose_pack_mode); "loop" runs them one after another, as below.
    """
    if choose_pack_mode(mode, configs, device) == "stack":
        return train_stacked(configs, splits, device, teacher, on_epoch, resume, test_every)
    if resume is not None and len(resume) != len(configs):
        raise ValueError(f"checkpoint holds {len(resume)} members, the pack has {len(configs)}")
    splits = splits.to(device)  # once, for every member
    members = [
        training_epochs(config, splits, device, teacher,  # a no-KD member's fidelity is measured against it too
                        resume=resume[i] if resume else None, test_every=test_every)
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
