"""A sweep's trials on GPUs: how many share each GPU and how many students each trains, when the user said
neither (--gpus-per-trial, --pack), chosen by measuring the experiment's student on a GPU
(kdtune.engine.fill).  The run measures in a Ray task on a GPU node, the dry run on this machine's GPU; both
remember the measurement for that device and model.  With ASHA or Optuna a trial stays one configuration's
seeds (a scheduler stops configurations, a searcher scores them), so only the number of trials per GPU is
chosen; a grid without ASHA may also get stacked packs of several configurations."""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass

import torch

from kdtune.engine.data import Splits
from kdtune.engine.errors import first_line
from kdtune.engine.fill import (
    MAX_STACK,
    PROCESS_COUNTS,
    STACK_FACTORS,
    FillChoice,
    Probe,
    choose_fill,
    free_bytes,
    measure_fill,
    process_limit,
)
from kdtune.engine.stack import can_stack
from kdtune.sweep.settings import Resources, SweepSettings, plan


def open_levers(settings: SweepSettings, resources: Resources) -> tuple[bool, bool]:
    """(whether the trials per GPU are to be chosen, whether the pack size is)."""
    processes = resources.gpus_per_trial is None
    pack = settings.pack_auto and not settings.pack and settings.search == "grid" and not settings.asha \
        and settings.pack_mode != "loop" and not settings.compile_step \
        and can_stack([settings.student_config(**point) for point in _points(settings)]) is None
    return processes, pack


def stack_sizes(settings: SweepSettings) -> tuple[int, ...]:
    """Stacked packs worth measuring: multiples of a configuration's seeds, up to every student of the sweep."""
    students = settings.seeds + plan(settings)["sweep_trials"]
    return tuple(sorted({min(f * settings.seeds, students, MAX_STACK) for f in STACK_FACTORS} - {settings.seeds}))


@dataclass(frozen=True)
class DataShape:
    """What the measurement needs of the data: their shape and the bytes each trial holds on its device."""

    classes: int
    image_size: tuple[int, int]
    n_train: int
    image_bytes: int

    @classmethod
    def of(cls, splits: Splits) -> "DataShape":
        images = (splits.train_images, splits.val_images, splits.test_images)
        return cls(splits.num_classes, splits.image_size, len(splits.train_labels),
                   sum(t.numel() * t.element_size() for t in images))


def probe(settings: SweepSettings, data: DataShape, resources: Resources, members: int) -> Probe:
    config = settings.student_config()
    return Probe(model=settings.student, classes=data.classes, image_size=data.image_size,
                 batch_size=config.effective_batch_size, precision=config.precision, members=members,
                 threads=max(1, int(resources.cpus_per_trial)), recipe=settings.recipe, sys_path=tuple(sys.path))


def decide(settings: SweepSettings, resources: Resources, data: DataShape, cpus_per_gpu: float,
           device: torch.device | None = None) -> FillChoice:
    """Measure on `device` (this process's GPU) and choose; the caller applies the choice (`apply`)."""
    device = device or torch.device("cuda")
    processes, pack = open_levers(settings, resources)
    trials = plan(settings)["tune_trials"]["sweep"]
    if resources.max_concurrent:
        trials = min(trials, resources.max_concurrent)
    free = free_bytes(device)
    # Each trial holds the whole splits on its device, and the teacher-logit cache unless it is too large.
    extra = data.image_bytes + settings.epochs * data.n_train * data.classes * 2  # the cache in 16 bits

    def limit_of(bytes_per_process):
        return process_limit(bytes_per_process, free, cpus_per_gpu, resources.cpus_per_trial, trials)

    measured, stacks = measure_fill(probe(settings, data, resources, settings.seeds), device, limit_of,
                                    stack_sizes(settings) if pack else (), PROCESS_COUNTS if processes else (1,),
                                    extra_bytes=extra)
    limit, why = limit_of(measured[0].bytes_per_process)
    return choose_fill(measured, stacks, limit, why)


def apply(settings: SweepSettings, resources: Resources, choice: FillChoice) -> tuple[SweepSettings, Resources]:
    processes, pack = open_levers(settings, resources)
    if processes:
        resources = dataclasses.replace(resources, gpus_per_trial=round(choice.gpus_per_trial, 6))
    if pack and choice.pack:
        settings = dataclasses.replace(settings, pack=choice.pack)
    return settings, resources


def wanted(settings: SweepSettings, resources: Resources, gpus: float) -> bool:
    """Whether a measurement is to choose anything: GPUs for trials, and a lever the user left open."""
    return gpus >= 1 and resources.gpus_per_trial != 0 and any(open_levers(settings, resources))


def place(settings: SweepSettings, resources: Resources, measure) -> tuple[SweepSettings, Resources, FillChoice | None, str]:
    """(settings, resources, the choice, the line that says it): `measure()` (`decide` here or in a Ray task)
    applied; a measurement that fails changes nothing, and the line says so: it is an optimisation, and the
    sweep runs without it (a whole GPU per trial)."""
    try:
        choice = measure()
    except Exception as error:
        return settings, resources, None, (f"  note: the GPU-fill measurement failed ({first_line(error)}); "
                                           f"trials use a whole GPU each")
    settings, resources = apply(settings, resources, choice)
    return settings, resources, choice, describe(choice, settings, resources)


def trial_images_per_s(choice: FillChoice) -> float:
    """Student-images/s of one trial as chosen: the chosen stack's, or the chosen processes' sum shared out."""
    if choice.pack:
        return next(s["images_per_s"] for s in choice.stacks if s["members"] == choice.pack)
    return next(m["images_per_s"] for m in choice.processes
                if m["processes"] == choice.trials_per_gpu) / choice.trials_per_gpu


def describe(choice: FillChoice, settings: SweepSettings, resources: Resources) -> str:
    share = "a whole GPU per trial" if resources.gpus_per_trial >= 1 else \
        f"{math.floor(1 / resources.gpus_per_trial + 1e-9)} trials per GPU (--gpus-per-trial {resources.gpus_per_trial:g})"
    pack = f", packs of {settings.pack} students" if settings.pack else ""
    return f"  GPU fill (measured): {share}{pack}: {choice.why}"


def _points(settings: SweepSettings) -> list[dict]:
    from kdtune.sweep.settings import sweep_points

    return [p for p in sweep_points(settings) if "temperature" in p] or [{}]
