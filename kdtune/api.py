"""The Python API: what `kdtune tune` and `kdtune report` do, as functions for a notebook or a script.

    from kdtune.api import report, sweep

    experiment = sweep({"temperature": [2, 4, 8], "alpha": 0.5}, teacher="resnet20", student="tinycnn",
                       data_dir="my-images", preset="quick")
    print(report(experiment)["markdown"])

Models are named as everywhere in kdtune (see kdtune.engine.models); the search space is a built-in name, a YAML
file or a dict; every other keyword is a field of `kdtune.sweep.settings.SweepSettings` (what is computed) or of
`kdtune.sweep.settings.Resources` (where it runs and where it is logged).  The defaults are `kdtune tune`'s,
from the same place: the preset, then `build_settings` and the two dataclasses.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from kdtune.engine.data import resolve_data_dir
from kdtune.engine.errors import UserError
from kdtune.sweep.presets import default_preset
from kdtune.sweep.resume import absolute, check_new_experiment
from kdtune.sweep.settings import Resources, SweepSettings, build_settings, default_name, experiment_root

CHOSEN_HERE = {"name", "search", "space", "preset", "data_dir", "seeds", "asha"}


def sweep(
    space,
    *,
    search: str = "grid",
    teacher: str | None = None,
    student: str | None = None,
    data_dir: str | os.PathLike | None = None,
    preset: str | None = None,
    name: str | None = None,
    results_dir: str | os.PathLike = "results",
    seeds: int | None = None,
    asha: bool | None = None,
    **options,
) -> Path:
    """Run a distillation sweep (teacher, logit cache, baseline and sweep experiments) and return its folder.

    `space`: a built-in search space's name ("temperature"), a YAML file, or a dict — a whole document
    ({"grid": {...}, "optuna": {...}}) or just the section `search` uses ({"temperature": [2, 8], "alpha": 0.5}).
    `teacher` / `student` / `epochs` / ...: as `kdtune tune`'s flags, defaulting to the preset's.  `seeds`
    defaults to 3 for grids and 1 for Optuna, `asha` to on for Optuna only.  Any other keyword is a
    SweepSettings or Resources field (e.g. epochs=2, train_subset=5000, cpus_per_trial=2, mlflow_uri=...).
    """
    if name is not None:
        check_new_experiment(experiment_root(name, results_dir))  # before the data are read
    settings, resources = _settings(space, search, teacher, student, data_dir, preset, name, seeds, asha, options)
    root = experiment_root(settings.name, results_dir)
    check_new_experiment(root)
    from kdtune.report.results import write_trial_summary
    from kdtune.sweep.runner import run_sweep

    record = run_sweep(settings, resources, root)
    write_trial_summary(root, record)
    return root


def plan(space, *, search: str = "grid", teacher: str | None = None, student: str | None = None,
         data_dir: str | os.PathLike | None = None, preset: str | None = None, seeds: int | None = None,
         asha: bool | None = None, **options) -> str:
    """What `sweep` with the same arguments would run, and its estimated cost on this machine (`--dry-run`)."""
    from kdtune.sweep.estimate import dry_run

    return dry_run(*settings(space, search=search, teacher=teacher, student=student, data_dir=data_dir, preset=preset,
                             seeds=seeds, asha=asha, **options))


def settings(space, *, search: str = "grid", teacher: str | None = None, student: str | None = None,
             data_dir: str | os.PathLike | None = None, preset: str | None = None, name: str | None = None,
             seeds: int | None = None, asha: bool | None = None, **options) -> tuple[SweepSettings, Resources]:
    """The settings and resources `sweep` with the same arguments would run with, built as `kdtune tune` builds
    them (checked, defaults filled in); nothing runs."""
    return _settings(space, search, teacher, student, data_dir, preset, name, seeds, asha, options)


def report(experiment: str | os.PathLike, out: str | os.PathLike | None = None, fmt: str = "png") -> dict:
    """Write an experiment's report (summary.md, summary.csv, figures) into `out` (default <experiment>/report).

    Returns {"out", "markdown", "configs" (the per-configuration table), "figures", "skipped", "teacher_card"
    (the teacher card's files)}.
    """
    from kdtune.report.summary import write_report

    return write_report(experiment, out, fmt)


def _settings(space, search, teacher, student, data_dir, preset, name, seeds, asha,
              options) -> tuple[SweepSettings, Resources]:
    resource_keys = {f.name for f in dataclasses.fields(Resources)}
    setting_keys = {f.name for f in dataclasses.fields(SweepSettings)} - CHOSEN_HERE
    unknown = sorted(set(options) - resource_keys - setting_keys)
    if unknown:
        allowed = sorted(resource_keys | setting_keys | {"seeds", "asha"})
        raise UserError(f"unknown sweep option(s) {', '.join(unknown)}; known: {', '.join(allowed)}")
    resources = absolute(Resources(**{k: v for k, v in options.items() if k in resource_keys}))
    values = {k: v for k, v in options.items() if k in setting_keys}
    preset = preset or default_preset()[0]
    settings = build_settings(
        name or default_name(search, space), search, space, preset, teacher=teacher, student=student,
        data_dir=str(resolve_data_dir(data_dir).resolve()), seeds=seeds, asha=asha, **values,
    )
    return settings, resources
