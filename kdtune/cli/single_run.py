"""The three single-run modes of the seed project: teacher, student, distill.

`run_mode` takes plain values (no argparse namespace), trains, writes the run's
JSON (config, per-epoch history, final metrics), its training-curve figure and
the trained model, and returns the JSON's content.

Everything a run will write is checked before it trains: an earlier run's
output is refused unless overwritten, and a path that cannot be written is
refused while nothing is lost yet.  A write that still fails after training
(a full disk) keeps the work in a fallback folder and says where.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from kdtune.engine.atomic import save_json
from kdtune.engine.checkpoint import save_model
from kdtune.engine.config import RunConfig
from kdtune.engine.data import cache_dir, load_dataset, make_splits
from kdtune.engine.device import configure, resolve_device
from kdtune.engine.errors import UserError, first_line
from kdtune.engine.models import check_model, count_parameters
from kdtune.engine.teacher import CachedTeacher, obtain_teacher, teacher_logits
from kdtune.engine.train import LiveTeacher, train
from kdtune.report.curves import plot_training_curves

MODES = ("teacher", "student", "distill")
SIBLINGS = (".pt", ".png")  # what a run writes beside its JSON, under the same name


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
    overwrite: bool = False,
    deterministic: bool = False,
    compiled: bool = False,
) -> dict:
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    torch_device = resolve_device(device)
    configure(torch_device, deterministic)
    data = load_dataset(data_dir, dataset=dataset, image_size=image_size)
    splits = make_splits(data, val_size=val_size, train_subset=train_subset)
    for config in {"teacher": [teacher], "student": [student], "distill": [teacher, student]}[mode]:
        check_model(config.model, splits.num_classes, splits.image_size)  # a bad model fails before any training
    if mode != "student" and teacher_path is not None and not Path(teacher_path).exists():
        writable_folder(Path(teacher_path), "--teacher-path")  # a teacher is trained, then saved there
    output, claimed = claim_output(output, mode, overwrite)
    cache_precision = teacher.precision
    if mode != "student":
        cache_precision = _auto_precision(teacher, splits, torch_device, "eval").precision
        teacher = _auto_precision(teacher, splits, torch_device, "train")
    if mode != "teacher":
        student = _auto_precision(student, splits, torch_device, "train")
    summary: dict = {"mode": mode, "data": {"dir": str(data_dir), **splits.summary()}, "device": str(torch_device)}

    with _released_on_failure(output, claimed):
        if mode != "student":
            found = obtain_teacher(teacher, splits, torch_device, teacher_store, teacher_path, progress,
                                   allow_foreign=allow_foreign_teacher)
            summary["teacher"] = {"path": str(found.path), **{k: v for k, v in found.meta.items() if k != "history"}}
            if "foreign_data" in found.meta:
                print(f"warning: teacher {found.path} was not trained on this run's data splits "
                      f"(--allow-foreign-teacher): it may have seen validation or test images")
            print(f"teacher {teacher.model}: val {found.meta['val_acc']:.2%}  test {found.meta['test_acc']:.2%}  "
                  f"({found.path})")
            if mode == "teacher":
                summary.update(history=found.meta["history"], final=found.meta["history"][-1])
                _write(output, summary, f"teacher {teacher.model}")
                return summary

        config = replace(student, alpha=0.0) if mode == "student" else student
        signal = None
        if config.alpha > 0:
            if use_cache:
                cache = teacher_logits(found, splits, config.aug_seed, config.epochs, torch_device, cache_precision,
                                       progress)
                signal = CachedTeacher(cache, splits, torch_device)
            else:
                signal = LiveTeacher(found.model, splits, torch_device, cache_precision)
        method = "" if config.method == "kd" else f"{config.method}, "
        label = f"student {config.model}" + (f" ({method}T={config.temperature:g}, alpha={config.alpha:g})"
                                             if config.alpha > 0 else "")
        result = train(config, splits, torch_device, teacher=signal, progress=progress, desc=label, compiled=compiled)
        summary.update(config=config.to_dict(), parameters=count_parameters(result.model), history=result.history,
                       final=result.final)
        learned = f"  learned T {result.final['learned_temperature']:.3g}" if "learned_temperature" in result.final else ""
        print(f"{label}: val {result.final['val_acc']:.2%}  test {result.final['test_acc']:.2%}{learned}")
        meta = {"config": config.to_dict(), "data_key": splits.key, "val_acc": result.final["val_acc"],
                "test_acc": result.final["test_acc"]}
        _write(output, summary, label, (result.model, config.model, meta, splits.num_classes))
        return summary


def _auto_precision(config: RunConfig, splits, device, step: str) -> RunConfig:
    """`config` with --precision auto made concrete on a CPU (measured for its model and step, as a sweep does:
    kdtune.engine.speed), the choice printed; a named precision, or auto on CUDA (bf16 where native), is kept."""
    if config.precision != "auto" or device.type != "cpu":
        return config
    from kdtune.engine.speed import choose_precision

    model = check_model(config.model, splits.num_classes, splits.image_size)
    choice = choose_precision(model, config.effective_batch_size, splits, device, None, step)
    role = {"train": "training", "eval": "teacher logits"}[step]
    print(f"precision (auto), {config.model} {role}: {choice.precision} ({choice.why})")
    return replace(config, precision=choice.precision)


# ----------------------------------------------------------------------------- outputs, checked before training


def claim_output(output: str | os.PathLike | None, mode: str, overwrite: bool = False) -> tuple[Path, bool]:
    """The run's JSON path, writable, and whether this run created it: an empty placeholder that holds the name
    until the JSON replaces it (`_released_on_failure` removes it when the run fails).

    An output whose .json, .pt or .png exists is refused unless `overwrite`.  The default name,
    results/runs/<mode>-<time>[-N].json, takes the first N free: the exclusive create is the claim, so two
    runs started in the same second never share one."""
    if output is None:
        stem = f"{mode}-{time.strftime('%Y%m%d-%H%M%S')}"
        for n in itertools.count(1):
            path = Path("results/runs") / (stem + (f"-{n}" if n > 1 else "") + ".json")
            # A model or figure whose JSON was deleted by hand still takes the name.
            if not any(path.with_suffix(s).exists() for s in SIBLINGS) and _create(path, "--output"):
                return path, True
    output = Path(output)
    for path in (output, *(output.with_suffix(s) for s in SIBLINGS)):
        if path.is_dir():
            raise UserError(f"cannot write --output {output}: {path} is a folder; choose another --output")
        if path.exists() and not overwrite:
            raise UserError(f"output {path} exists (an earlier run's); choose another --output or pass --overwrite "
                            f"to replace that run's .json, .pt and .png")
    if overwrite:
        writable_folder(output, "--output")
        return output, False
    if not _create(output, "--output"):
        raise UserError(f"output {output} was just created by another run; choose another --output")
    return output, True


def writable_folder(path: Path, flag: str) -> None:
    """Create the folders above `path` and check that a file can be written beside it, or refuse `flag`'s value."""
    blocker = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"cannot write {flag} {path}: {blocker} is a file, not a folder; choose another {flag}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise UserError(f"cannot write {flag} {path}: {first_line(error)}; choose another {flag}") from None


def _create(path: Path, flag: str) -> bool:
    """Create `path` empty, exclusively; False when it exists."""
    writable_folder(path, flag)
    try:
        with open(path, "x"):
            return True
    except FileExistsError:
        return False
    except OSError as error:
        raise UserError(f"cannot write {flag} {path}: {first_line(error)}; choose another {flag}") from None


@contextmanager
def _released_on_failure(output: Path, claimed: bool):
    """Remove the placeholder JSON of a run that fails, so that the same --output can be used again."""
    try:
        yield
    except BaseException:
        if claimed and output.is_file() and output.stat().st_size == 0:  # still the placeholder, never a result
            output.unlink()
        raise


# ----------------------------------------------------------------------------- writing the results


def _write(output: Path, summary: dict, title: str, model: tuple | None = None) -> None:
    """The run's .pt (`model`: save_model's arguments after the path), .png, then .json: a complete JSON means a
    complete run.  A failed write keeps the work elsewhere (`_keep_elsewhere`) and is one error line."""
    target = output.with_suffix(".pt")
    try:
        if model is not None:
            save_model(target, *model)
        else:
            target.unlink(missing_ok=True)  # an overwritten run's model would pass for this teacher run's
        target = output.with_suffix(".png")
        plot_training_curves(summary["history"], target, title)
        target = output
        save_json(output, summary)
    except (OSError, RuntimeError) as error:  # RuntimeError: torch.save's writer on a full disk
        raise UserError(f"could not write {target} ({first_line(error)}); {_keep_elsewhere(output, summary, model)}") \
            from None
    print(f"wrote {output}, {output.with_suffix('.png')}" + (f" and {output.with_suffix('.pt')}" if model else ""))


def _keep_elsewhere(output: Path, summary: dict, model: tuple | None) -> str:
    """Save the model and JSON in a new folder under $KDTUNE_CACHE_DIR/recovered, else the temp folder; where."""
    errors = []
    for root in (cache_dir() / "recovered", Path(tempfile.gettempdir()) / "kdtune-recovered"):
        try:
            root.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(dir=root, prefix=f"{output.stem}-"))
            if model is not None:
                save_model(folder / f"{output.stem}.pt", *model)
            save_json(folder / f"{output.stem}.json", summary)
        except (OSError, RuntimeError) as error:
            errors.append(first_line(error))
            continue
        if model is None:
            return (f"the run's results are kept in {folder / (output.stem + '.json')} "
                    f"(the teacher is {summary['teacher']['path']})")
        return f"the trained model is kept in {folder / (output.stem + '.pt')}, its results beside it"
    lost = ": the trained model is lost" if model is not None else ""
    return f"nothing could be kept elsewhere either ({'; '.join(errors)}){lost}"
