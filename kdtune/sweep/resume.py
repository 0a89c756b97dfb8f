"""Finishing an experiment: what its experiment.json records, and what a --resume may change.

experiment.json is written once a run has passed every check and loaded its data, before any
training, and rewritten as the teacher becomes ready, as each Tune phase starts and as the run ends.
It holds everything a resume needs, so that `kdtune tune --resume --name X` alone finishes X where it
stopped (kdtune.report.record reads it, for a resume as for a report):

* `settings`: what the experiment computes; a --resume never changes them;
* `resources`: where and how wide it runs (address, trial resources, concurrency, autoscaling, the
  Tune storage path and the teacher store as absolute paths); a --resume may change these;
* `storage` and `phases_started`: where Tune keeps its state and which phases must have state there,
  so that state gone missing is an error, never a silent fresh start;
* `cache_mode`: the precision of the teacher-logit cache, fixed by the first run, so that a resume
  with other trial resources reuses that cache instead of building another;
* `status`: running, interrupted or finished;
* `kdtune_version`: the record's form; experiments of an earlier kdtune are reported, not resumed.

A resume may repeat the flags of the command it finishes (the up arrow, then --resume): a value equal to
the record's is accepted, one that differs is refused, naming the flag and both values.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
import shutil
from pathlib import Path

from kdtune.engine.atomic import save_json
from kdtune.engine.data import resolve_data_dir
from kdtune.engine.errors import UsageError, UserError
from kdtune.engine.teacher import default_store
from kdtune.report.record import RECORD, RECORD_VERSION, is_older, read_record, storage_child
from kdtune.sweep.settings import Resources, SweepSettings
from kdtune.sweep.spaces import space_label

DEFAULT_RESULTS_DIR = "results"
# Options that only say where or how wide the experiment runs: a --resume may give them, and they are recorded.
PLACEMENT_OPTIONS = ("address", "max_concurrent", "cpus_per_trial", "gpus_per_trial", "autoscale", "storage_path",
                     "teacher_store")
# Options that find the experiment or say what to do with it.
RESUME_OPTIONS = ("resume", "name", "results_dir", "dry_run")
# Command-line options recorded under another name: in the record's resources, or as the search and its space.
RECORDED_AS = {"mlflow": ("resources", "mlflow_uri"), "wandb": ("resources", "wandb_project"),
               "py_modules": ("resources", "py_modules"), "working_dir": ("resources", "working_dir"),
               "compile": ("settings", "compile_step")}
_UNRECORDED = object()


def _flag(dest: str) -> str:
    return "--asha/--no-asha" if dest == "asha" else "--" + dest.replace("_", "-")


def check_new_experiment(root: Path) -> None:
    """Refuse to start an experiment where one is recorded already (a cheap early check; `Claim` decides)."""
    if (Path(root) / RECORD).exists():
        raise UsageError(f"experiment {root} already exists; add --resume to finish it, or choose another --name")


class Claim:
    """A new experiment's name, claimed by creating its record exclusively: of two starts with one name, one
    wins and the other is refused before it touches anything.  Only the winner may remove what it made, and
    only while nothing of value is in it (`release`)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.made = [folder for folder in (self.root, *self.root.parents) if not folder.exists()]  # deepest first
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(self.root / RECORD, "x") as file:
                file.write('{"status": "starting"}\n')
        except FileExistsError:
            raise UsageError(f"experiment {self.root} was started by another kdtune a moment ago and is running; "
                             f"choose another --name") from None
        except OSError as error:
            raise UserError(f"cannot create experiment {self.root}: {error.strerror or error}") from None

    def release(self) -> None:
        """Remove the experiment folder this claim made (or only its record, in a folder that was there)."""
        if self.root in self.made:
            shutil.rmtree(self.root, ignore_errors=True)
            for folder in self.made[1:]:
                try:
                    folder.rmdir()
                except OSError:
                    break
        else:
            (self.root / RECORD).unlink(missing_ok=True)


def check_resume_options(given: dict, record: dict) -> None:
    """Refuse, naming them, options given with --resume ({dest: value}) whose value differs from the record's:
    the experiment's settings are fixed.  The same values again are fine, and placement options may change."""
    differing = []
    for dest, value in sorted(given.items()):
        if dest in PLACEMENT_OPTIONS or dest in RESUME_OPTIONS:
            continue
        recorded = _recorded_value(dest, record)
        if recorded is _UNRECORDED or not _same(dest, value, recorded):
            if dest == "asha":  # a pair of switches: each value is its own flag
                shown = "not recorded" if recorded is _UNRECORDED else "--asha" if recorded else "--no-asha"
                differing.append(f"{'--asha' if value else '--no-asha'} (recorded: {shown})")
            else:
                shown = "not recorded" if recorded is _UNRECORDED else _show(recorded)
                differing.append(f"{_flag(dest)} {_show(value)} (recorded: {shown})")
    if differing:
        raise UsageError(
            f"{'; '.join(differing)}: --resume cannot change what the experiment computes, fixed in its {RECORD} "
            f"(only {', '.join(_flag(d) for d in PLACEMENT_OPTIONS)} may change); start a new experiment with "
            f"another --name instead"
        )


def _recorded_value(dest: str, record: dict):
    settings = record["settings"]
    if dest in ("grid", "optuna"):
        return settings["space"]["name"] if settings["search"] == dest else f"--{settings['search']} search"
    where, key = RECORDED_AS.get(dest, ("settings", dest))
    return record.get(where, {}).get(key, _UNRECORDED)


def _same(dest: str, given, recorded) -> bool:
    if dest in ("grid", "optuna"):
        return space_label(given) == recorded
    if dest in ("data_dir", "teacher_path", "working_dir") and given is not None and recorded is not None:
        folder = resolve_data_dir(given) if dest == "data_dir" else Path(given)
        return folder.resolve() == Path(recorded).resolve()
    if isinstance(given, (list, tuple)) or isinstance(recorded, (list, tuple)):
        return len(given) == len(recorded) and all(_same(dest, a, b) for a, b in zip(given, recorded))
    if isinstance(given, (int, float)) and isinstance(recorded, (int, float)) and not isinstance(given, bool):
        return math.isclose(given, recorded, rel_tol=1e-12)
    return given == recorded


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(_show, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def absolute(resources: Resources) -> Resources:
    """`resources` with the local storage path and the teacher store absolute, as a resume from elsewhere needs."""
    storage = resources.storage_path
    if storage is not None and "://" not in storage:
        storage = str(Path(storage).resolve())
    return dataclasses.replace(resources, storage_path=storage,
                               teacher_store=str(Path(resources.teacher_store or default_store()).resolve()))


def load_record(root: Path) -> dict:
    """The record of the experiment to resume; refused, in one line, when it is missing, damaged or older."""
    if not (Path(root) / RECORD).is_file():
        raise UserError(f"{root} is not a kdtune experiment (no {RECORD}); nothing to resume")
    record = read_record(root)
    if is_older(record):
        raise UserError(f"experiment {root} was started by an earlier kdtune (0.1), whose Tune state names modules "
                        f"that have moved: it can be reported (kdtune report {shlex.quote(str(root))}) but not "
                        f"resumed; start it again under another --name")
    return record


def recorded_settings(record: dict) -> SweepSettings:
    return SweepSettings.from_dict(record["settings"])


def recorded_resources(record: dict, changes: dict) -> Resources:
    """The resources the experiment last ran with, changed by the placement options given to this --resume."""
    saved = dict(record["resources"])
    saved["py_modules"] = tuple(saved.get("py_modules", ()))  # JSON's list
    return absolute(Resources(**{**saved, **changes}))


def start_record(previous: dict | None, settings: SweepSettings, resources: Resources, storage: str,
                 cache_mode: str) -> dict:
    """The record of a run about to train: a new one, or `previous` with this run's placement.  The environment
    it started on is kept; a resume on another adds its own under `resumed_on`."""
    record = dict(previous or {})
    here = environment(settings, resources, cache_mode)
    if previous is None or "environment" not in previous:
        record["environment"] = here
    elif environment_changes(previous["environment"], here):
        record.setdefault("resumed_on", []).append(here)
    record.update(status="running", settings=settings.to_dict(), resources=dataclasses.asdict(resources),
                  storage=storage, cache_mode=cache_mode, kdtune_version=RECORD_VERSION)
    record.setdefault("phases_started", [])
    return record


def environment(settings: SweepSettings, resources: Resources, cache_mode: str) -> dict:
    """What the run ran on, as far as it changes numbers: library versions, the device, threads, precision.
    (The same seed gives other numbers under other thread counts or library builds.)"""
    import platform

    import ray
    import torch
    import torchvision

    from kdtune import __version__
    from kdtune.engine.device import device_name

    gpus = bool(resources.gpus_per_trial) and torch.cuda.is_available()
    return {"kdtune": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "ray": ray.__version__,
            "device": device_name(torch.device("cuda" if gpus else "cpu")),
            "threads_per_trial": max(1, int(resources.cpus_per_trial)),
            "precision": settings.resolved_precision or settings.precision, "cache_precision": cache_mode}


def environment_changes(before: dict, now: dict) -> list[str]:
    """'torch 2.5.1 (started on 2.4.0)' for each part of the environment that differs."""
    return [f"{key} {now[key]} (started on {before[key]})" for key in now if key in before and before[key] != now[key]]


def check_tune_state(storage: str, phases_started: list[str]) -> None:
    """Fail, before any work, when Tune's state of a phase the record says started is not in `storage`."""
    from ray import tune

    for phase in phases_started:
        path = storage_child(storage, phase)
        if not tune.Tuner.can_restore(path):
            raise UserError(f"Tune's state of the {phase} phase is not in {path}, where {RECORD} says it is; "
                            f"pass --storage-path with where it is now (nothing was started over)")


def tune_has_run(path: str) -> bool:
    """Whether Tune saved the run state of its experiment at `path`.

    A Tuner writes tuner.pkl when it is built, but its trials' state (experiment_state-*.json) only once
    it runs; restoring one that never ran loses trials, so such a phase is started afresh instead.
    """
    import pyarrow.fs

    fs, fs_path = pyarrow.fs.FileSystem.from_uri(path if "://" in path else str(Path(path).resolve()))
    entries = fs.get_file_info(pyarrow.fs.FileSelector(fs_path, allow_not_found=True))
    return any(Path(entry.path).name.startswith("experiment_state") for entry in entries)


def kept_by_tune(previous: dict, resources: Resources) -> list[str]:
    """The options changed on this resume that a phase Tune restores ignores: it keeps its trials' resources
    and its concurrency limit from its own state."""
    before = previous.get("resources", {})
    return [_flag(dest) for dest in ("cpus_per_trial", "gpus_per_trial", "max_concurrent")
            if dest in before and getattr(resources, dest) is not None and before[dest] != getattr(resources, dest)]


def save_record(root: Path, record: dict) -> None:
    save_json(Path(root) / RECORD, record)


def resume_command(name: str, results_dir: str) -> str:
    """The command that finishes experiment `name`: its name is all it needs."""
    words = ["kdtune", "tune", "--resume", "--name", name]
    if str(results_dir) != DEFAULT_RESULTS_DIR:
        words += ["--results-dir", str(results_dir)]
    return shlex.join(words)
