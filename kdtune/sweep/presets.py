"""Sweep presets: defaults for models, recipes, epochs and data that any flag overrides."""

from __future__ import annotations

from dataclasses import dataclass, field

from kdtune.engine.errors import UserError


@dataclass(frozen=True)
class Preset:
    teacher: str
    student: str
    recipe: str  # students'
    teacher_recipe: str
    teacher_epochs: int
    epochs: int  # students'
    train_subset: int | None = None
    val_size: int = 5000
    space_overrides: dict = field(default_factory=dict)  # see kdtune.sweep.spaces.apply_overrides
    confirm: int | str = 0  # fresh seeds to re-train the chosen configuration and the baseline on, or "auto"
    seeds: int | None = None  # a grid's seeds per configuration; None: build_settings' (3 for a grid, 1 for Optuna)
    about: str = ""


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        teacher="resnet18", student="cnn3", recipe="strong", teacher_recipe="strong", teacher_epochs=30, epochs=30,
        confirm="auto",
        about="resnet18 -> cnn3, SGD + one-cycle, full data, the choice re-measured on as many fresh seeds as give a "
              "95% interval of +-0.5 points (at most 20): the numbers to "
              "publish (a GPU job)",
    ),
    "seed": Preset(
        teacher="resnet18", student="cnn3", recipe="seed", teacher_recipe="seed", teacher_epochs=20, epochs=15,
        space_overrides={"temperature": [1, 2, 3, 4, 5, 6, 8, 10], "alpha": 0.3},
        about="the seed project's experiment: Adam + StepLR, teacher 20 epochs, students 15, alpha 0.3",
    ),
    # The temperature question on a 2-core CPU in a little over an hour (bf16 where the CPU has it): the full
    # training set, a resnet20 teacher trained past 85% test accuracy (20 epochs gave 84.4%), tinycnn students
    # trained until their validation accuracy levels off (benchmarks/student_epochs.py), T from 1 to 20, and 5
    # seeds: the fewest pairs on which the report states significance (MIN_PAIRS), more than the 4 that resolve a
    # 1-point paired gain at 80% power at the paired SD this preset measured (0.31-0.49 points).
    "laptop": Preset(
        teacher="resnet20", student="tinycnn", recipe="strong", teacher_recipe="strong", teacher_epochs=30, epochs=30,
        space_overrides={"temperature": [1, 2, 4, 8, 20]}, seeds=5,
        about="an answer on a laptop CPU: resnet20 -> tinycnn on the full data, students trained until they level "
              "off, T from 1 to 20, 5 seeds (a 1-point gain at 80% power, and the report's minimum for a "
              "significance statement), a little over an hour on 2 cores with bf16",
    ),
    "quick": Preset(
        teacher="resnet20", student="tinycnn", recipe="strong", teacher_recipe="strong", teacher_epochs=8, epochs=6,
        train_subset=5000, val_size=1000,
        about="a smoke test, not an answer: minutes on a CPU, a weak teacher (about 51% test accuracy), 6-epoch "
              "students on a 5,000-image subset; it shows the pipeline works on your data and models (an answer: "
              "--preset laptop on a CPU, paper on a GPU)",
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def default_preset() -> tuple[str, str]:
    """(preset, why) for a run that named none: `paper` where a GPU is visible, else `quick` — the paper
    preset on a CPU-only machine would start a job of many hours."""
    import torch

    if torch.cuda.is_available():
        return "paper", f"a GPU is visible ({torch.cuda.get_device_name(0)}); --preset quick for a few-minute smoke test"
    return "quick", ("no GPU is visible here: a smoke test, not an answer; --preset laptop for one on this CPU, "
                     "paper for the full experiment (a GPU job)")
