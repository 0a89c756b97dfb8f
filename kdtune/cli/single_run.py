"""The three single-run modes of the seed project: teacher, student, distill.

`run_mode` takes plain values (no argparse namespace), trains, writes the run's
JSON (config, per-epoch history, final metrics), its training-curve figure and
the trained model, and returns the JSON's content.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

from kdtune.engine.atomic import save_json
from kdtune.engine.checkpoint import save_model
from kdtune.engine.config import RunConfig
from kdtune.engine.data import load_dataset, make_splits
from kdtune.engine.device import resolve_device
from kdtune.engine.errors import UserError
from kdtune.engine.models import check_model, count_parameters
from kdtune.engine.teacher import CachedTeacher, obtain_teacher, teacher_logits
from kdtune.engine.train import LiveTeacher, train
from kdtune.report.curves import plot_training_curves

MODES = ("teacher", "student", "distill")


def run_mode(
    mode: str,
    student: RunConfig,
    teacher: RunConfig,
    data_dir: str | os.PathLike,
    dataset: str | None = None,
    image_size: int | None = None,
    val_size: int = 5000,
    train_subset: int | None = None,
    device: str = "auto",
    teacher_path: str | os.PathLike | None = None,
    teacher_store: str | os.PathLike | None = None,
    use_cache: bool = True,
    output: str | os.PathLike | None = None,
    progress: bool = True,
    allow_foreign_teacher: bool = False,
) -> dict:
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    torch_device = resolve_device(device)
    data = load_dataset(data_dir, dataset=dataset, image_size=image_size)
    splits = make_splits(data, val_size=val_size, train_subset=train_subset)
    for config in {"teacher": [teacher], "student": [student], "distill": [teacher, student]}[mode]:
        check_model(config.model, splits.num_classes, splits.image_size)  # a bad model fails before any training
    output = Path(output or f"results/runs/{mode}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    summary: dict = {"mode": mode, "data": {"dir": str(data_dir), **splits.summary()}, "device": str(torch_device)}

    if mode != "student":
        found = obtain_teacher(teacher, splits, torch_device, teacher_store, teacher_path, progress,
                               allow_foreign=allow_foreign_teacher)
        summary["teacher"] = {"path": str(found.path), **{k: v for k, v in found.meta.items() if k != "history"}}
        if "foreign_data" in found.meta:
            print(f"warning: teacher {found.path} was not trained on this run's data splits (--allow-foreign-teacher): "
                  f"it may have seen validation or test images")
        print(f"teacher {teacher.model}: val {found.meta['val_acc']:.2%}  test {found.meta['test_acc']:.2%}  ({found.path})")
        if mode == "teacher":
            summary.update(history=found.meta["history"], final=found.meta["history"][-1])
            _write(output, summary, teacher.model, f"teacher {teacher.model}")
            return summary

    config = replace(student, alpha=0.0) if mode == "student" else student
    signal = None
    if config.alpha > 0:
        if use_cache:
            cache = teacher_logits(found, splits, config.aug_seed, config.epochs, torch_device, config.precision, progress)
            signal = CachedTeacher(cache, splits, torch_device)
        else:
            signal = LiveTeacher(found.model, splits, torch_device, config.precision)
    method = "" if config.method == "kd" else f"{config.method}, "
    label = f"student {config.model}" + (f" ({method}T={config.temperature:g}, alpha={config.alpha:g})"
                                         if config.alpha > 0 else "")
    result = train(config, splits, torch_device, teacher=signal, progress=progress, desc=label)
    summary.update(config=config.to_dict(), parameters=count_parameters(result.model), history=result.history,
                   final=result.final)
    save_model(output.with_suffix(".pt"), result.model, config.model, {"config": config.to_dict(), "data_key": splits.key,
               "val_acc": result.final["val_acc"], "test_acc": result.final["test_acc"]}, splits.num_classes)
    learned = f"  learned T {result.final['learned_temperature']:.3g}" if "learned_temperature" in result.final else ""
    print(f"{label}: val {result.final['val_acc']:.2%}  test {result.final['test_acc']:.2%}{learned}")
    _write(output, summary, config.model, label)
    return summary


def _write(output: Path, summary: dict, model: str, title: str) -> None:
    save_json(output, summary)
    figure = plot_training_curves(summary["history"], output.with_suffix(".png"), title)
    print(f"wrote {output} and {figure}")
