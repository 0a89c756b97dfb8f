"""Ray Tune sweeps over temperature, alpha and the temperature method.

    settings -> data -> teacher + logit cache (a Ray task) -> sweep experiment (the baseline,
    alpha = 0 on every seed, and the grid or Optuna points) -> confirm experiment (with
    --confirm K: the chosen configuration and the baseline on K fresh seeds) -> summaries

The baseline is the sweep experiment's first trial, so that while it trains, sweep trials fill the other
slots; ASHA never stops it and Optuna is never told of it (it is no candidate).

Baseline and distilled students share every training setting but alpha, T and the method
(`SweepSettings.student_config`): the comparison measures distillation alone.

Everything of an experiment lives under `results/<name>/`: `experiment.json`
(what a resume needs: see `kdtune.sweep.resume`), Tune's experiment folders
`sweep/` and `confirm/` (under `--storage-path` when given), and the summaries
written at the end.  A resume restores the Tune experiments from their state
(`Tuner.restore`, errored trials resumed), so finished trials never run again.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kdtune.engine.config import (
    CTKD_RANGE,
    STUDENT_AUG_SEED,
    TEACHER_AUG_SEED,
    RunConfig,
    check_recipe_name,
    warmup_epochs,
)
from kdtune.engine.data import Splits, check_dataset, load_dataset, make_splits
from kdtune.engine.errors import UsageError, UserError, quote
from kdtune.engine.losses import DKD_BETA
from kdtune.engine.models import check_model, check_model_name
from kdtune.engine.stack import PACK_MODES
from kdtune.report.record import (
    DEFAULT_METHOD,
    SearchSpace,
    describe_distribution,
    format_value,
    planned_students,
    storage_child,
)
from kdtune.sweep.presets import get_preset
from kdtune.sweep.spaces import apply_overrides, resolve_search_space, space_label
from kdtune.sweep.tracking import check_tracking

METRIC = "val_acc"
MAX_TIED_CONFIRMED = 3  # configurations tied for best that a confirmation re-measures, the chosen one included
NAME = re.compile(r"[A-Za-z0-9._-]+")  # an experiment's name: one folder, safe in a shell and on any file system
SEARCHES = ("grid", "optuna")
SAMPLERS = ("tpe", "cmaes", "random")  # Optuna samplers by name (kdtune.sweep.searchers.make_sampler)
# The no-KD baseline's trial config (a pack adds its seeds); "phase" tells it from the sweep's own trials.
BASELINE = {"phase": "baseline", "alpha": 0.0, "temperature": 1.0, "method": DEFAULT_METHOD}


def is_baseline(config: dict) -> bool:
    return config.get("phase") == "baseline"


@dataclass(frozen=True)
class SweepSettings:
    """What an experiment computes; saved in experiment.json and reused by --resume.

    The defaults below, with a preset's (kdtune.sweep.presets) and `build_settings`'s search-dependent ones, are
    the only defaults of a sweep: `kdtune tune` and `kdtune.api` both build their settings through
    `build_settings`, passing None for what the user did not give."""

    name: str
    search: str  # "grid" or "optuna"
    space: SearchSpace
    preset: str
    teacher: str
    student: str
    recipe: str
    teacher_recipe: str
    teacher_epochs: int
    epochs: int
    data_dir: str
    val_size: int
    train_subset: int | None
    seeds: int  # build_settings: 3 for a grid, 1 for Optuna
    asha: bool  # build_settings: on for Optuna, off for a grid
    grace_period: int  # build_settings: the first epoch after the learning-rate warm-up
    num_samples: int = 20  # Optuna points (each run with every seed)
    sampler: str = "tpe"
    search_seed: int = 0
    reduction_factor: int = 3  # ASHA keeps the best 1/N at each rung
    max_failures: int = 2  # retries of a crashed trial from its last checkpoint
    precision: str = "auto"
    # What "auto" came to on CPU trials, measured once when the experiment starts and kept by its resumes:
    # {"student": ..., "teacher": ..., "cache": ...}, each "bf16" or "fp32" (None: auto as it is, bf16 on CUDA).
    resolved_precision: dict | None = None
    aug_seed: int = STUDENT_AUG_SEED  # the students' views, and the teacher-logit cache's
    teacher_aug_seed: int = TEACHER_AUG_SEED  # the teacher's training views: part of the teacher store's key
    lr: float | None = None  # students'; None: the recipe's
    label_smoothing: float = 0.0  # every student's, distilled or not
    teacher_label_smoothing: float = 0.0
    # Fresh seeds on which the chosen configuration (and up to two tied with it) and the baseline are trained
    # again: K, or "auto" (as many as the search's paired spread says reach a 95% interval of +-target_ci points,
    # at most max_confirm_seeds); 0: none.
    confirm: int | str = 0
    target_ci: float = 0.5  # points: the half-width of the confirmation's 95% interval that "auto" aims at
    max_confirm_seeds: int = 20
    confirm_fresh_views: bool = False  # the confirmation on a new augmentation stream too (a second logit cache)
    teacher_path: str | None = None  # a teacher checkpoint to use instead of the store's
    allow_foreign_teacher: bool = False  # accept a --teacher-path trained on other data splits
    test_every: int = 0  # students' test set: after the last epoch, and every N epochs too (0: only then)
    dataset: str | None = None  # cifar10, cifar100 or folder; None: inferred from data_dir
    image_size: int | None = None  # resize every image to S x S at decode time; None: as stored
    ctkd_range: tuple[float, float] = CTKD_RANGE  # method ctkd: the learned temperature's bounds
    ctkd_ramp_epochs: int | None = None  # method ctkd: epochs of the gradient reversal's ramp (None: the paper's share)
    dkd_beta: float = DKD_BETA  # method dkd: the weight of NCKD
    dkd_warmup_epochs: int | None = None  # method dkd: epochs of the KD weight's warm-up (None: the authors' share)
    deterministic: bool = False  # on GPUs: deterministic kernels only (kdtune.engine.device.configure)
    checkpoint_every: int | None = None  # trials checkpoint every N epochs (None: kdtune.sweep.trainable.CheckpointPolicy)
    compile_step: bool = False  # students' forward through torch.compile (measured no faster on this project's CPU)
    pack: int = 0  # students per Tune trial, of any configurations, baseline included; 0: a configuration's seeds
    pack_mode: str = "auto"  # how a pack trains its members: kdtune.engine.stack.PACK_MODES
    # No --pack was given: where trials use GPUs, a grid without ASHA may get stacked packs chosen by measuring
    # (kdtune.sweep.gpu_fill); `pack` then holds the choice.
    pack_auto: bool = False

    def __post_init__(self):
        check_model_name(self.teacher)
        check_model_name(self.student)
        if self.dataset is not None:
            check_dataset(self.dataset)
        if self.image_size is not None and self.image_size < 1:
            raise UserError(f"invalid image-size {self.image_size}: must be an integer >= 1")
        check_recipe_name(self.recipe)
        check_recipe_name(self.teacher_recipe)
        if self.confirm != "auto" and not (isinstance(self.confirm, int) and self.confirm >= 0):
            raise UserError(f"invalid confirm {self.confirm!r}: must be an integer >= 0 or 'auto'")
        if not 0 < self.target_ci < 100:
            raise UserError(f"invalid target-ci {self.target_ci:g}: must be a number of points in (0, 100)")
        for field, low in (("seeds", 1), ("num_samples", 1), ("epochs", 1), ("teacher_epochs", 1),
                           ("grace_period", 1), ("reduction_factor", 2), ("max_failures", 0), ("max_confirm_seeds", 2),
                           ("test_every", 0), ("pack", 0)):
            if getattr(self, field) < low:
                raise UserError(f"invalid {field.replace('_', '-')} {getattr(self, field)}: must be an integer >= {low}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise UserError(f"invalid checkpoint-every {self.checkpoint_every}: must be an integer >= 1")
        if self.pack and (self.search != "grid" or self.asha):
            # A scheduler stops trials and a searcher scores them: a pack of several configurations is neither.
            raise UserError(f"--pack {self.pack} packs students of different configurations into one trial: it needs "
                            f"a grid search without early stopping (--grid, --no-asha)")
        if self.pack_mode not in PACK_MODES:
            raise UserError(f"unknown pack-mode {self.pack_mode!r}; choose one of {', '.join(PACK_MODES)}")
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        for field in ("label_smoothing", "teacher_label_smoothing"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise UserError(f"invalid {field.replace('_', '-')} {getattr(self, field)}: must be a number in [0, 1)")
        warmup = warmup_epochs(self.recipe, self.epochs)
        if self.asha and self.grace_period <= warmup:
            # A rung inside the warm-up compares students while the learning rate is still rising to its peak.
            raise UserError(
                f"invalid grace-period {self.grace_period}: ASHA would stop trials inside the learning-rate warm-up "
                f"(epochs 1-{warmup} of {self.epochs} under recipe {self.recipe!r}); use --grace-period {warmup + 1} "
                f"or more"
            )
        if not sweep_points(self):
            raise UserError(f"search space {self.space.name!r} has no distilled configuration: alpha = 0 is the "
                            f"no-KD baseline, which every experiment trains anyway; give alpha a value > 0")
        self._check_points()

    def _check_points(self) -> None:
        """Every configuration the search can try is a valid run (a grid point's method and T, say), before any work."""
        low, high = self.ctkd_range
        for point in sweep_points(self):
            if "temperature" in point:  # an Optuna point samples its T: its distribution is checked below
                try:
                    self.student_config(**{"alpha": 1.0, **point})
                except UserError as error:
                    where = ", ".join(f"{k} {format_value(v)}" for k, v in point.items())
                    raise UserError(f"search space {self.space.name!r}, point {where}: {error}") from None
        dists = self.space.distributions
        methods = set(self.space.methods)
        if self.pack_mode == "stack" and self.compile_step:
            raise UserError("--compile compiles each student of a loop; pack-mode stack trains one batched "
                            "computation it does not compile: use --pack-mode loop or auto")
        if self.pack_mode == "stack" and methods - {"kd"}:
            raise UserError(f"pack-mode stack trains method kd only; this space also has "
                            f"{', '.join(sorted(methods - {'kd'}))}: use --pack-mode loop or auto")
        if self.search == "optuna" and "ctkd" in methods and "temperature" in dists:
            _, t_low, t_high = dists["temperature"]
            if not low <= t_low < t_high <= high:
                raise UserError(f"invalid temperature distribution [{t_low:g}, {t_high:g}] for method ctkd: its T is "
                                f"the learned temperature's start and must lie within ctkd-range [{low:g}, {high:g}]")

    def to_dict(self) -> dict:
        """Plain JSON types (tuples as lists), equal to what experiment.json reads back."""
        return _as_json(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: dict) -> "SweepSettings":
        values = {**values, "space": SearchSpace(**values["space"])}
        if "ctkd_range" in values:
            values["ctkd_range"] = tuple(values["ctkd_range"])  # JSON's list
        return cls(**values)

    def student_config(self, **varied) -> RunConfig:
        """The one set of student settings: every trial, baseline or distilled, adds only alpha, T, method and seed."""
        return RunConfig(model=self.student, epochs=self.epochs, recipe=self.recipe, precision=self.precision_of("student"),
                         aug_seed=self.aug_seed, lr=self.lr, label_smoothing=self.label_smoothing,
                         ctkd_range=tuple(self.ctkd_range), ctkd_ramp_epochs=self.ctkd_ramp_epochs,
                         dkd_beta=self.dkd_beta, dkd_warmup_epochs=self.dkd_warmup_epochs, **varied)

    def precision_of(self, role: str) -> str:
        """The precision a role ("student", "teacher" or "cache") runs in: what auto came to, where it was measured."""
        return (self.resolved_precision or {}).get(role, self.precision)

    def teacher_config(self) -> RunConfig:
        return RunConfig(model=self.teacher, epochs=self.teacher_epochs, recipe=self.teacher_recipe,
                         precision=self.precision_of("teacher"), label_smoothing=self.teacher_label_smoothing,
                         aug_seed=self.teacher_aug_seed)

    def students_record(self) -> dict:
        """What every student of the experiment is trained with, resolved (no 'the recipe's' left), for experiment.json."""
        config = self.student_config()
        shared = {k: v for k, v in config.to_dict().items() if k not in ("temperature", "alpha", "seed", "method")}
        return {**shared, "lr": config.effective_lr, "batch_size": config.effective_batch_size,
                "seeds": list(range(self.seeds)),
                "confirm_seeds": "auto" if self.confirm == "auto" else self.confirm_seeds(self.confirm),
                "varied_per_trial": ["alpha", "temperature", "method", "seed"]}

    @property
    def confirm_aug_seed(self) -> int:
        """The confirmation's augmentation stream: the search's, or with --confirm-fresh-views one neither the
        teacher nor the search has seen, so that the re-measured gain is not conditional on the search's views."""
        return max(self.aug_seed, self.teacher_aug_seed) + 1 if self.confirm_fresh_views else self.aug_seed

    def confirm_seeds(self, count: int) -> list[int]:
        """`count` fresh seeds, never used in the search, for re-training the chosen configuration and the baseline."""
        return list(range(self.seeds, self.seeds + count))


@dataclass(frozen=True)
class Resources:
    """Where and how wide an experiment runs; may differ between a run and its --resume."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: as measured where the cluster has GPUs (kdtune.sweep.gpu_fill), else none
    max_concurrent: int | None = None
    address: str | None = None
    storage_path: str | None = None  # default: the experiment folder itself
    teacher_store: str | None = None
    autoscale: bool = False  # the cluster starts nodes on demand (also detected for Ray's autoscaler)
    mlflow_uri: str | None = None  # log every trial to this MLflow tracking server or store (kdtune.sweep.tracking)
    wandb_project: str | None = None  # log every trial to this Weights & Biases project
    py_modules: tuple[str, ...] = ()  # the user's model code (.py files or package folders), shipped to every node
    working_dir: str | None = None  # a folder shipped to every node and made the workers' working directory

    def __post_init__(self):
        check_tracking(self.mlflow_uri, self.wandb_project)
        if not self.cpus_per_trial > 0:
            raise UserError(f"invalid cpus-per-trial {self.cpus_per_trial}: must be > 0")
        if self.gpus_per_trial is not None and self.gpus_per_trial < 0:
            raise UserError(f"invalid gpus-per-trial {self.gpus_per_trial}: must be >= 0")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise UserError(f"invalid max-concurrent {self.max_concurrent}: must be >= 1")
        for path in self.py_modules:
            if not (Path(path).is_dir() or (Path(path).is_file() and path.endswith(".py"))):
                raise UserError(f"--py-modules {path}: not a .py file or a package folder")
        if self.working_dir is not None and not Path(self.working_dir).is_dir():
            raise UserError(f"--working-dir {self.working_dir}: not a folder")

    @property
    def trial_resources(self) -> dict:
        assert self.gpus_per_trial is not None, "resolve gpus_per_trial against the cluster first"
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}

    def with_default_gpus(self, cluster_gpus: float) -> "Resources":
        """No --gpus-per-trial and no measured choice: a whole GPU per trial when the cluster has GPUs."""
        if self.gpus_per_trial is not None:
            return self
        return dataclasses.replace(self, gpus_per_trial=1.0 if cluster_gpus >= 1 else 0.0)

    @property
    def runtime_env(self) -> dict | None:
        """Ray's runtime environment for the user's code, or None when there is none to ship."""
        env = {}
        if self.py_modules:
            env["py_modules"] = [str(Path(p).resolve()) for p in self.py_modules]
        if self.working_dir is not None:
            env["working_dir"] = str(Path(self.working_dir).resolve())
        return env or None

    def import_user_code(self) -> None:
        """Make the code that `runtime_env` ships importable here too, where specs are checked and teachers built."""
        folders = [Path(p).resolve().parent for p in self.py_modules]
        folders += [Path(self.working_dir).resolve()] if self.working_dir is not None else []
        for folder in map(str, folders):
            if folder not in sys.path:
                sys.path.insert(0, folder)


def _as_json(value):
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_json(v) for v in value]
    return value


def build_settings(name: str, search: str, space, preset_name: str, **values) -> SweepSettings:
    """Settings from a preset, with any value given (not None) overriding it, and SweepSettings' own defaults
    for what neither sets.  `space`: a built-in name, a YAML path, a dict or a SearchSpace (see
    kdtune.sweep.spaces.resolve_search_space).  Seeds default to 3 for a grid and 1 for Optuna, ASHA to on
    for Optuna only, and its grace period to the first epoch after the learning-rate warm-up.  A preset's
    training subset is an upper bound: at most the training images the data have (which reads the data)."""
    if search not in SEARCHES:
        raise UserError(f"unknown search {search!r}; choose one of {', '.join(SEARCHES)}")
    preset = get_preset(preset_name)
    space = resolve_search_space(space, search)
    space = apply_overrides(space, preset.space_overrides)
    defaults = {k: getattr(preset, k) for k in ("teacher", "student", "recipe", "teacher_recipe", "teacher_epochs",
                                                 "epochs", "val_size", "train_subset", "confirm")}
    chosen = {**defaults, **{k: v for k, v in values.items() if v is not None}}
    chosen.setdefault("seeds", preset.seeds if preset.seeds and search == "grid" else 3 if search == "grid" else 1)
    chosen.setdefault("asha", search == "optuna")
    chosen["pack_auto"] = values.get("pack") is None
    if chosen.get("grace_period") is None:
        chosen["grace_period"] = warmup_epochs(chosen["recipe"], chosen["epochs"]) + 1
    settings = SweepSettings(name=name, search=search, space=space, preset=preset_name, **chosen)
    if values.get("train_subset") is None and preset.train_subset is not None:  # after the checks that cost nothing
        available = training_images(settings.data_dir, settings.val_size, settings.dataset, settings.image_size)
        if 0 < available < preset.train_subset:
            settings = dataclasses.replace(settings, train_subset=available)
    return settings


def training_images(data_dir: str, val_size: int, dataset: str | None, image_size: int | None) -> int:
    """How many training images the data have once the validation split is carved out (decoded once, cached)."""
    return len(load_dataset(data_dir, dataset=dataset, image_size=image_size).train_labels) - val_size


def default_name(search: str, space) -> str:
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", space_label(space)).strip(".-") or "space"  # a file's stem may hold spaces
    return f"{label}-{search}-{time.strftime('%Y%m%d-%H%M%S')}"


def load_splits(settings: SweepSettings) -> Splits:
    dataset = load_dataset(settings.data_dir, dataset=settings.dataset, image_size=settings.image_size)
    return make_splits(dataset, settings.val_size, settings.train_subset)


def resolve_precision(settings: SweepSettings, splits: Splits, threads: int,
                      teacher_threads: int) -> tuple[SweepSettings, dict]:
    """On CPU trials, what --precision auto means for the students' training, the teacher's and its logit cache,
    each measured for its own model and step here (kdtune.engine.speed.choose_precision) with the threads it will
    run with; (the settings with `resolved_precision`, {role: the choice with its measured speed-up}).  Settings
    that name a precision, or already hold the choice (a resume), are returned as they are."""
    if settings.precision != "auto" or settings.resolved_precision is not None:
        return settings, {}
    import torch

    from kdtune.engine.speed import choose_precision

    cpu, classes, size = torch.device("cpu"), splits.num_classes, splits.image_size
    student, teacher = check_model(settings.student, classes, size), check_model(settings.teacher, classes, size)
    choices = {
        "student": choose_precision(student, settings.student_config().effective_batch_size, splits, cpu, threads),
        "teacher": choose_precision(teacher, settings.teacher_config().effective_batch_size, splits, cpu,
                                    teacher_threads),
        "cache": choose_precision(teacher, settings.teacher_config().effective_batch_size, splits, cpu,
                                  teacher_threads, step="eval"),
    }
    resolved = {role: choice.precision for role, choice in choices.items()}
    return dataclasses.replace(settings, resolved_precision=resolved), {r: c.to_dict() for r, c in choices.items()}


def describe_precision(choices: dict) -> str:
    """'precision (auto): students bf16 (measured 2.10x fp32's images/s here), ...'."""
    names = {"student": "students", "teacher": "teacher", "cache": "logit cache"}
    return "  precision (auto): " + "; ".join(f"{names[role]} {c['precision']} ({c['why']})" for role, c in choices.items())


def check_models(settings: SweepSettings, splits: Splits) -> None:
    """Build teacher and student once for these data: a model that cannot take them fails before any work."""
    for spec in (settings.teacher, settings.student):
        check_model(spec, splits.num_classes, splits.image_size)


# ----------------------------------------------------------------------------- the plan


def sweep_points(settings: SweepSettings) -> list[dict]:
    """Distilled grid points (each run with every seed); for Optuna, the fixed part of every point.

    A grid point with alpha = 0 is no distillation at all (its T is meaningless): it is the baseline,
    which runs with every seed anyway, so it is left out of the search."""
    return settings.space.points()


def plan(settings: SweepSettings) -> dict:
    """How many students of each kind (a Tune trial is a pack of them), how many Tune trials, and how many
    student epochs in total (ASHA may stop some early)."""
    seeds = settings.seeds
    students = planned_students(settings.to_dict())
    sweep_trials, confirm_trials = students["sweep"], students["confirm"]
    if settings.pack:  # the baseline's students and the sweep's, packed together
        tune_trials = {"sweep": math.ceil((seeds + sweep_trials) / settings.pack)}
    else:  # the baseline's pack is the sweep experiment's first trial
        tune_trials = {"sweep": 1 + sweep_trials // seeds}
    tune_trials["confirm"] = 2 if settings.confirm else 0
    return {"baseline_trials": seeds, "sweep_trials": sweep_trials, "confirm_trials": confirm_trials,
            "student_epochs": (seeds + sweep_trials + confirm_trials) * settings.epochs, "tune_trials": tune_trials}


def pack_members(settings: SweepSettings) -> list[list[dict]]:
    """--pack N: the baseline's students and the grid's, N to a Tune trial, each as {phase, alpha, T, method, seed}.

    Packing the baseline with the sweep leaves no slot idle while the baseline trains."""
    seeds = range(settings.seeds)
    members = [{**BASELINE, "seed": s} for s in seeds]
    members += [{"phase": "sweep", **point, "seed": s} for point in sweep_points(settings) for s in seeds]
    return [members[i:i + settings.pack] for i in range(0, len(members), settings.pack)]


def describe_plan(settings: SweepSettings, n_train: int, teacher_stored: bool | None,
                  estimate: str | None = None) -> str:
    """The plan, a line per part; `teacher_stored` None: not looked up yet."""
    counts = plan(settings)
    space = settings.space
    lines = [f"experiment {settings.name}: {settings.search} search over {space.name!r} ({space.description})",
             f"  preset {settings.preset}: {get_preset(settings.preset).about}",
             f"  teacher {settings.teacher} ({settings.teacher_recipe}, {settings.teacher_epochs} epochs): "
             + (f"from {settings.teacher_path}" if settings.teacher_path else
                "in the store, reused" if teacher_stored else "to be trained" if teacher_stored is not None else
                "from the store, or trained and stored")
             + (f", label smoothing {settings.teacher_label_smoothing:g}" if settings.teacher_label_smoothing else "")
             + f", augmentation stream {settings.teacher_aug_seed}"
             + (" (the students' too: it labels the very views it trained on)"
                if settings.teacher_aug_seed == settings.aug_seed else ""),
             f"  students {settings.student} ({settings.recipe}, {settings.epochs} epochs) on {n_train} training images"
             f"{_subset_note(settings, n_train)}, seeds 0..{settings.seeds - 1}",
             f"  every student: {_shared_settings(settings)}; only alpha, T, the method and the seed differ",
             f"  baseline (no distillation, alpha 0): {counts['baseline_trials']} trials"
             + ", trained alongside the sweep's"]
    if settings.search == "grid":
        for point in sweep_points(settings):
            lines.append("  " + ", ".join(f"{k}={format_value(v)}" for k, v in point.items()) + f" x {settings.seeds} seeds")
        if 0 in space.axes.get("alpha", []):
            lines.append("  (alpha = 0 is the baseline above, not a distilled configuration: left out of the grid)")
    else:
        for param, spec in space.distributions.items():
            lines.append(f"  {param} ~ {describe_distribution(spec)}")
        lines.append(f"  fixed: {space.fixed}; {settings.num_samples} points x {settings.seeds} seeds, "
                     f"sampler {settings.sampler}")
    if settings.asha:
        lines.append(f"  ASHA early stopping: grace {settings.grace_period} epochs (warm-up: "
                     f"{warmup_epochs(settings.recipe, settings.epochs)}), reduction factor {settings.reduction_factor}")
    if settings.confirm == "auto":
        lines.append(f"  confirmation: the chosen configuration (and up to {MAX_TIED_CONFIRMED - 1} tied with it) and the "
                     f"baseline again on fresh seeds, as many as the search's paired spread says give a 95% interval "
                     f"of ±{settings.target_ci:g} points, at most {settings.max_confirm_seeds}: up to "
                     f"{counts['confirm_trials']} students for one configuration"
                     + (f", on a new augmentation stream {settings.confirm_aug_seed} (a second logit cache: the "
                        f"teacher's pass over the training set for {settings.epochs} epochs)"
                        if settings.confirm_fresh_views else ""))
    elif settings.confirm:
        seeds = settings.confirm_seeds(settings.confirm)
        lines.append(f"  confirmation: the chosen configuration (and up to {MAX_TIED_CONFIRMED - 1} tied with it) and the "
                     f"baseline again on {settings.confirm} fresh "
                     f"seeds {seeds[0]}..{seeds[-1]}: {counts['confirm_trials']} students for one configuration"
                     + (f", on a new augmentation stream {settings.confirm_aug_seed} (a second logit cache: the "
                        f"teacher's pass over the training set for {settings.epochs} epochs)"
                        if settings.confirm_fresh_views else ""))
    total = counts["baseline_trials"] + counts["sweep_trials"] + counts["confirm_trials"]
    tune_trials = sum(counts["tune_trials"].values())
    packing = (f"{settings.pack} students per trial, the baseline's packed with the sweep's" if settings.pack else
               "a configuration's seeds per trial")
    lines.append(f"  total: {total} students in {tune_trials} Tune trials ({packing}; pack mode {settings.pack_mode}), "
                 f"up to {counts['student_epochs']} student epochs")
    if estimate:
        lines.append(estimate)
    return "\n".join(lines)


def _subset_note(settings: SweepSettings, n_train: int) -> str:
    """A word when the preset's training subset is more than the data have: it is an upper bound."""
    bound = get_preset(settings.preset).train_subset
    return f" (all the data have: preset {settings.preset}'s subset is {bound})" if bound and n_train < bound else ""


def _shared_settings(settings: SweepSettings) -> str:
    r = settings.students_record()
    return (f"recipe {r['recipe']}, {r['epochs']} epochs, lr {r['lr']:g}, batch {r['batch_size']}, "
            f"label smoothing {r['label_smoothing']:g}, aug_seed {r['aug_seed']}, precision {r['precision']}")


# ----------------------------------------------------------------------------- files


def experiment_root(name: str, results_dir: str | os.PathLike = "results") -> Path:
    """`<results_dir>/<name>`; a name is one path component, so that no experiment is written outside its folder."""
    if not NAME.fullmatch(name) or name in (".", ".."):
        raise UsageError(f"invalid experiment name {quote(name)}: use letters, digits, '-', '_' and '.' "
                         f"(one folder name under --results-dir, not '.' or '..')")
    return Path(results_dir) / name


def tune_storage(root: Path, resources: Resources) -> str:
    """Where Tune keeps the experiment: the experiment folder, or <storage-path>/<name> (a URI is fine)."""
    if resources.storage_path is None:
        return str(root.resolve())
    if "://" in resources.storage_path:
        return storage_child(resources.storage_path, root.name)
    return str((Path(resources.storage_path) / root.name).resolve())


def check_storage_writable(storage: str) -> None:
    """Refuse a local storage folder that cannot be written, leaving behind no folder this check made."""
    if "://" in storage:
        return  # remote storage: Ray reports its own errors on first write
    path = Path(storage)
    made = [folder for folder in (path, *path.parents) if not folder.exists()]  # deepest first
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".kdtune-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise UserError(f"storage path {storage} cannot be written: {error.strerror or error}") from None
    finally:
        for folder in made:
            try:
                folder.rmdir()
            except OSError:
                break
