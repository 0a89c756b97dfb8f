"""What a sweep will cost: its wall clock on this machine, estimated from what the run will really do.

`--dry-run` measures, in a few seconds, how fast the student trains and evaluates with the threads a
trial gets (one per CPU Ray assigns it) or its GPU, and how fast the teacher does with what its task gets
(a whole GPU, or every CPU of the node).  The estimate then counts what the run does with them:

    start-up   Ray, the object store, and every Tune trial's worker process
    teacher    its training epochs (unless stored) and one evaluation of validation and test
    cache      one forward pass per augmented view of every student epoch, plus validation and test
    phases     sweep (the baseline's pack its first trial) and confirm, one after another; each phase's
               trials (packs of students) placed on the parallel slots as Tune launches them, in order, each
               as soon as a slot frees;
               a student trains every epoch, evaluates validation every epoch and the test set after its last

ASHA may stop trials early: the estimate is then an upper bound.  On a GPU machine the dry run first makes
the run's GPU-fill choice (kdtune.sweep.gpu_fill) and estimates with the rate it measured.  `dry_run` at
the end is `kdtune tune --dry-run` and `kdtune.api.plan`.
"""

from __future__ import annotations

import heapq
import math
import os
from dataclasses import dataclass

from kdtune.engine.models import check_model
from kdtune.report.record import confirm_seed_count
from kdtune.sweep.settings import (
    Resources,
    SweepSettings,
    describe_plan,
    describe_precision,
    load_splits,
    pack_members,
    plan,
    resolve_precision,
)

# Fixed costs measured on the 2-core CPU machine of this project (Ray 2.x, torch 2.14): `ray.init` with the
# object-store puts of the data, and a trial's worker process with its imports and its copy of the data.
RAY_START_S = 10.0
TRIAL_START_S = 4.0


@dataclass(frozen=True)
class Speeds:
    """Images per second: training steps (augmented, forward and backward) and evaluation (forward only)."""

    student_train: float
    student_eval: float
    teacher_train: float
    teacher_eval: float


@dataclass(frozen=True)
class Work:
    """What the run computes, counted from its plan."""

    n_train: int
    n_val: int
    n_test: int
    epochs: int
    teacher_epochs: int
    test_every: int
    phase_packs: dict  # phase -> [students in each of its Tune trials], in launch order
    train_teacher: bool
    build_cache: bool
    build_fresh_cache: bool = False  # --confirm-fresh-views: the confirmation's own cache, on its own stream


@dataclass(frozen=True)
class Cost:
    start_s: float
    teacher_s: float
    cache_s: float
    phase_s: dict  # phase -> wall-clock seconds
    slots: int

    @property
    def total_s(self) -> float:
        return self.start_s + self.teacher_s + self.cache_s + sum(self.phase_s.values())


def student_seconds(work: Work, speeds: Speeds) -> float:
    """One student: every epoch trained and validated; the test set after the last epoch (and every --test-every)."""
    tests = 1 + (work.epochs // work.test_every if work.test_every else 0) - (
        1 if work.test_every and work.epochs % work.test_every == 0 else 0)
    return (work.epochs * (work.n_train / speeds.student_train + work.n_val / speeds.student_eval)
            + tests * work.n_test / speeds.student_eval)


def phase_seconds(packs: list[int], one_student_s: float, slots: int) -> float:
    """Wall clock of one phase: trials launched in order onto `slots`, each taking a free slot when one frees."""
    if not packs:
        return 0.0
    free_at = [0.0] * max(1, slots)
    for members in packs:
        start = heapq.heappop(free_at)
        heapq.heappush(free_at, start + TRIAL_START_S + members * one_student_s)
    return max(free_at)


def estimate(work: Work, speeds: Speeds, slots: int) -> Cost:
    teacher_s = 0.0
    if work.train_teacher:
        teacher_s = (work.teacher_epochs * work.n_train / speeds.teacher_train
                     + (work.n_val + work.n_test) / speeds.teacher_eval)
    one_cache_s = (work.epochs * work.n_train + work.n_val + work.n_test) / speeds.teacher_eval
    cache_s = one_cache_s * (work.build_cache + work.build_fresh_cache)
    one = student_seconds(work, speeds)
    phases = {phase: phase_seconds(packs, one, slots) for phase, packs in work.phase_packs.items()}
    return Cost(RAY_START_S, teacher_s, cache_s, phases, slots)


def describe(cost: Cost, speeds: Speeds, threads: str) -> str:
    phases = ", ".join(f"{phase} {s / 60:.1f}" for phase, s in cost.phase_s.items() if s)
    return (f"  estimated wall clock on this machine: {cost.total_s / 60:.1f} min = {cost.total_s:.0f} s (start-up "
            f"{cost.start_s / 60:.1f}, "
            f"teacher {cost.teacher_s / 60:.1f}, logit cache {cost.cache_s / 60:.1f}, {phases} min; "
            f"{cost.slots} trial(s) at a time) — from measured throughput: student {speeds.student_train:.0f} img/s "
            f"training, {speeds.student_eval:.0f} evaluating ({threads}); teacher {speeds.teacher_train:.0f} / "
            f"{speeds.teacher_eval:.0f}; an upper bound when ASHA stops trials early")


# ----------------------------------------------------------------------------- measuring

def slots_here(cpus_per_trial: float, gpus_per_trial: float, max_concurrent: int | None, cpus: int, gpus: int) -> int:
    """Trials this machine runs at once: Ray's CPU (and GPU) accounting, capped by --max-concurrent."""
    slots = math.floor(cpus / cpus_per_trial) if cpus_per_trial > 0 else cpus
    if gpus_per_trial > 0:
        slots = min(slots, math.floor(gpus / gpus_per_trial))
    if max_concurrent:
        slots = min(slots, max_concurrent)
    return max(1, slots)


# ----------------------------------------------------------------------------- the dry run


def phase_packs(settings: SweepSettings) -> dict:
    """phase -> the number of students in each of its Tune trials, in the order Tune launches them."""
    counts = plan(settings)
    if settings.pack:
        packs = {"sweep": [len(p) for p in pack_members(settings)]}
    else:  # the baseline's pack is launched first, in the sweep's experiment
        packs = {"sweep": [settings.seeds] * counts["tune_trials"]["sweep"]}
    packs["confirm"] = [confirm_seed_count(settings.to_dict())] * counts["tune_trials"]["confirm"]
    return packs


def dry_run(settings: SweepSettings, resources: Resources) -> str:
    """The plan, and its wall clock estimated from throughput measured here (the cost model above)."""
    import torch

    from kdtune.engine.speed import measure
    from kdtune.engine.teacher import cache_entries, cache_mode, locate_teacher
    from kdtune.sweep import gpu_fill

    splits = load_splits(settings)
    gpus = torch.cuda.device_count()
    fill, fill_line = None, None
    if gpu_fill.wanted(settings, resources, gpus):  # as the run chooses, measured on this machine's GPU
        settings, resources, fill, fill_line = gpu_fill.place(settings, resources, lambda: gpu_fill.decide(
            settings, resources, gpu_fill.DataShape.of(splits), (os.cpu_count() or 1) / gpus))
    resources = resources.with_default_gpus(gpus)
    device = torch.device("cuda" if resources.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu")
    cpus = os.cpu_count() or 1
    threads = max(1, int(resources.cpus_per_trial))
    choices = {}
    if resources.gpus_per_trial == 0:
        settings, choices = resolve_precision(settings, splits, threads, cpus)
    # A --teacher-path trained on other splits is refused here already, as the run would.
    teacher = locate_teacher(settings.teacher_config(), splits, resources.teacher_store, settings.teacher_path,
                             settings.allow_foreign_teacher)

    def cached(aug_seed: int) -> bool:
        return teacher is not None and all(path.is_file() for path in cache_entries(
            teacher, splits, aug_seed, settings.epochs, cache_mode(settings.precision_of("cache"), device)).values())

    size, classes = splits.image_size, splits.num_classes
    student = measure(check_model(settings.student, classes, size), settings.student_config().effective_batch_size,
                      splits, device, threads, precision=settings.precision_of("student"))
    teacher_model, teacher_batch = check_model(settings.teacher, classes, size), settings.teacher_config().effective_batch_size
    teacher_train = measure(teacher_model, teacher_batch, splits, device, cpus, precision=settings.precision_of("teacher"))
    cache_eval = measure(teacher_model, teacher_batch, splits, device, cpus, precision=settings.precision_of("cache"))
    if fill is not None:  # the measured rate of a trial as chosen, sharing its GPU or stacking its students
        student = (gpu_fill.trial_images_per_s(fill), student[1])
    speeds = Speeds(*student, teacher_train[0], cache_eval[1])
    work = Work(len(splits.train_labels), len(splits.val_labels), len(splits.test_labels), settings.epochs,
                settings.teacher_epochs, settings.test_every, phase_packs(settings), teacher is None,
                not cached(settings.aug_seed),
                bool(settings.confirm) and settings.confirm_fresh_views and not cached(settings.confirm_aug_seed))
    slots = slots_here(resources.cpus_per_trial, resources.gpus_per_trial, resources.max_concurrent, cpus, gpus)
    where = "on the GPU" if device.type == "cuda" else f"{threads} thread{'s' * (threads > 1)} per trial"
    line = describe(estimate(work, speeds, slots), speeds, where)
    if choices:
        line = describe_precision(choices) + "\n" + line
    if fill_line:
        line = fill_line + "\n" + line
    return describe_plan(settings, len(splits.train_labels), teacher is not None, line)
