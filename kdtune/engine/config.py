"""Training recipes and the one typed config of a training run.

`RunConfig.from_dict` is the only way a dict (from Ray Tune or a JSON file)
becomes a config: unknown keys and wrong types are refused, not ignored.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from kdtune.engine.errors import UserError
from kdtune.engine.losses import DKD_BETA, DKD_WARMUP, METHODS
from kdtune.engine.models import check_model_name


@dataclass(frozen=True)
class Recipe:
    """How a network is optimised. Learning rate is per batch of `batch_size` images."""

    optimizer: str  # "adam" or "sgd"
    lr: float
    weight_decay: float
    batch_size: int
    schedule: str  # "step", "onecycle" or "cosine"
    momentum: float = 0.9  # sgd only (Nesterov)
    step_size: int = 10  # "step" schedule: epochs between decays
    gamma: float = 0.1  # "step" schedule: decay factor


RECIPES: dict[str, Recipe] = {
    # The seed project's recipe, kept as the default so its numbers can be reproduced.
    "seed": Recipe(optimizer="adam", lr=1e-3, weight_decay=1e-4, batch_size=128, schedule="step"),
    # SGD + one-cycle trains a far better teacher in few epochs than Adam + StepLR.
    "strong": Recipe(optimizer="sgd", lr=0.1, weight_decay=5e-4, batch_size=256, schedule="onecycle"),
    "cosine": Recipe(optimizer="sgd", lr=0.1, weight_decay=5e-4, batch_size=256, schedule="cosine"),
}
# No recipe smooths labels: smoothing erases the between-class similarity a high T is meant to reveal
# (Mueller, Kornblith & Hinton 2019), and a baseline smoothed unlike its distilled students is confounded.
# `RunConfig.label_smoothing` turns it on explicitly, for teacher or students.

# One-cycle warms the learning rate up over this fraction of all steps, then decays it to zero.
WARMUP_FRACTION = 0.2

PRECISIONS = ("auto", "fp32", "bf16")
CTKD_RANGE = (1.0, 21.0)  # the learned temperature's bounds in Li et al. 2023
CTKD_RAMP = 10 / 240  # the fraction of training over which CTKD's gradient reversal ramps up (10 of 240 epochs)


def check_recipe_name(name: str) -> Recipe:
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


# Two augmentation streams: a teacher trains on one, the soft targets it gives students (and their views) come
# from the other, so that it never labels the very views it was fitted to (sharper than on views it never saw).
TEACHER_AUG_SEED = 0
STUDENT_AUG_SEED = 1


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides what one training run computes (the device aside).

    alpha weights the KD term and 1 - alpha the cross-entropy; alpha = 0 trains
    without a teacher.  `seed` sets model init, data order and dropout;
    `aug_seed` sets the augmented view of every image in every epoch, and is
    shared by the seeds of a sweep so that one teacher-logit cache serves them.

    `method` (kdtune.engine.losses) is how T is used: `kd` a fixed T, `ls` the base T of standardised logits,
    `ctkd` the initial value of a learned T bounded by `ctkd_range`, whose gradient reversal ramps up
    over `ctkd_ramp_epochs` (None: the paper's 10 of 240 epochs, scaled to this run, at least 1); `dkd` weighs
    NCKD by `dkd_beta` and warms its KD weight up over `dkd_warmup_epochs` (None: the authors' 20 of 240,
    scaled, at least 1).  `kd-shuffled` and `kd-uniform` are controls (kdtune.engine.losses).
    """

    model: str
    epochs: int
    recipe: str = "seed"
    temperature: float = 4.0
    alpha: float = 0.0
    seed: int = 0
    aug_seed: int = 0
    lr: float | None = None  # None: the recipe's
    batch_size: int | None = None  # None: the recipe's
    label_smoothing: float = 0.0  # the same for distilled students and their no-KD baseline
    precision: str = "auto"
    method: str = "kd"
    ctkd_range: tuple[float, float] = CTKD_RANGE
    ctkd_ramp_epochs: int | None = None
    dkd_beta: float = DKD_BETA
    dkd_warmup_epochs: int | None = None

    def __post_init__(self):
        check_model_name(self.model)
        check_recipe_name(self.recipe)
        _check(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        _check(math.isfinite(self.temperature) and self.temperature > 0, "temperature", self.temperature, "a number > 0")
        _check(0.0 <= self.alpha <= 1.0, "alpha", self.alpha, "a number in [0, 1]")
        _check(self.lr is None or (math.isfinite(self.lr) and self.lr > 0), "lr", self.lr, "a number > 0")
        _check(self.batch_size is None or self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _check(0.0 <= self.label_smoothing < 1.0, "label_smoothing", self.label_smoothing, "a number in [0, 1)")
        _check(self.precision in PRECISIONS, "precision", self.precision, f"one of {', '.join(PRECISIONS)}")
        _check(self.method in METHODS, "method", self.method, f"one of {', '.join(METHODS)}")
        low, high = self.ctkd_range
        _check(0 < low < high and math.isfinite(high), "ctkd_range", self.ctkd_range, "two numbers 0 < low < high")
        _check(self.ctkd_ramp_epochs is None or self.ctkd_ramp_epochs >= 1, "ctkd_ramp_epochs", self.ctkd_ramp_epochs,
               "an integer >= 1")
        _check(math.isfinite(self.dkd_beta) and self.dkd_beta >= 0, "dkd_beta", self.dkd_beta, "a number >= 0")
        _check(self.dkd_warmup_epochs is None or self.dkd_warmup_epochs >= 1, "dkd_warmup_epochs",
               self.dkd_warmup_epochs, "an integer >= 1")
        if self.method == "ctkd" and self.alpha > 0:
            _check(low < self.temperature < high, "temperature", self.temperature,
                   f"strictly inside ctkd_range ({low:g}, {high:g}): it is the learned temperature's initial value")

    @property
    def recipe_spec(self) -> Recipe:
        return RECIPES[self.recipe]

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else self.recipe_spec.lr

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size if self.batch_size is not None else self.recipe_spec.batch_size

    @property
    def warmup_epochs(self) -> int:
        return warmup_epochs(self.recipe, self.epochs)

    @property
    def learns_temperature(self) -> bool:
        return self.method == "ctkd" and self.alpha > 0

    @property
    def effective_ctkd_ramp_epochs(self) -> int:
        if self.ctkd_ramp_epochs is not None:
            return self.ctkd_ramp_epochs
        return ctkd_ramp_epochs(self.epochs)

    @property
    def effective_dkd_warmup_epochs(self) -> int:
        if self.dkd_warmup_epochs is not None:
            return self.dkd_warmup_epochs
        return max(1, round(DKD_WARMUP * self.epochs))

    def to_dict(self) -> dict:
        """Plain JSON types: ctkd_range as a list, as a JSON file or a checkpoint reads it back."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UserError(f"unknown run-config key(s) {', '.join(unknown)}; known keys: {', '.join(known)}")
        missing = sorted(name for name, f in known.items() if _is_required(f) and name not in values)
        if missing:
            raise UserError(f"run config is missing required key(s): {', '.join(missing)}")
        return cls(**{name: _coerce(name, value, known[name].type) for name, value in values.items()})


def warmup_epochs(recipe: str, epochs: int) -> int:
    """Epochs (counted from 1) that the learning-rate warm-up reaches into: 0 for schedules without one."""
    if check_recipe_name(recipe).schedule != "onecycle":
        return 0
    return math.ceil(WARMUP_FRACTION * epochs)


def ctkd_ramp_epochs(epochs: int) -> int:
    """CTKD's default ramp of its gradient reversal: the paper's 10 of 240 epochs, scaled to `epochs`, at least 1."""
    return max(1, round(CTKD_RAMP * epochs))


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _check(ok: bool, name: str, value, allowed: str) -> None:
    if not ok:
        raise UserError(f"invalid {name} {value!r}: must be {allowed}")


def _coerce(name: str, value, type_name: str):
    """Accept the values a YAML file or Ray Tune produces (ints for floats, numpy scalars); refuse the rest."""
    optional = "None" in type_name
    if value is None:
        if optional:
            return None
        raise UserError(f"invalid {name} None: a value is required")
    base = type_name.split("|")[0].strip()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalar from a Tune search space
    if base == "str" and isinstance(value, str):
        return value
    if base == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if base == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base.startswith("tuple[float") and isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return tuple(float(v) for v in value)  # JSON has no tuples: a checkpoint's config holds a list
    raise UserError(f"invalid {name} {value!r}: expected {type_name}")


def several_configurations(configs: list[RunConfig]) -> bool:
    """Whether a pack holds students of different configurations, not only one configuration's seeds."""
    return len({repr(sorted({**c.to_dict(), "seed": None}.items())) for c in configs}) > 1
