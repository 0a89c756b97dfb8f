"""Finishing an experiment: what its experiment.json records, and what a --resume may change.

experiment.json is written once a run has passed every check and loaded its data, before any
training, and rewritten as the teacher becomes ready, as each Tune phase starts and as the run ends.
It holds everything a resume needs, so that `tune.py --resume --name X` alone finishes X where it
stopped:

* `settings`: what the experiment computes; a --resume never changes them;
* `resources`: where and how wide it runs (address, trial resources, concurrency, autoscaling, the
  Tune storage path and the teacher store as absolute paths); a --resume may change these;
* `storage` and `phases_started`: where Tune keeps its state and which phases must have state there,
  so that state gone missing is an error, never a silent fresh start;
* `cache_mode`: the precision of the teacher-logit cache, fixed by the first run, so that a resume
  with other trial resources reuses that cache instead of building another;
* `status`: running, interrupted or finished.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

from kdtune.engine.atomic import save_json
from kdtune.engine.errors import UsageError, UserError
from kdtune.sweep.settings import Resources, SweepSettings
from kdtune.engine.teacher import default_store

RECORD = "experiment.json"
DEFAULT_RESULTS_DIR = "results"
# Options that only say where or how wide the experiment runs: a --resume may give them, and they are recorded.
PLACEMENT_OPTIONS = ("address", "max_concurrent", "cpus_per_trial", "gpus_per_trial", "autoscale", "storage_path",
                     "teacher_store")
# Options that find the experiment or say what to do with it.
RESUME_OPTIONS = ("resume", "name", "results_dir", "dry_run")


def _flag(dest: str) -> str:
    return "--asha/--no-asha" if dest == "asha" else "--" + dest.replace("_", "-")


def check_resume_options(given: set[str]) -> None:
    """Refuse, naming them, options given with --resume that are not known to leave the results unchanged."""
    changing = sorted(set(given) - set(PLACEMENT_OPTIONS) - set(RESUME_OPTIONS))
    if changing:
        raise UsageError(
            f"{', '.join(_flag(d) for d in changing)} cannot be given with --resume: the experiment's settings are "
            f"fixed in its {RECORD} (only {', '.join(_flag(d) for d in PLACEMENT_OPTIONS)} may change); "
            f"start a new experiment with another --name instead"
        )


def absolute(resources: Resources) -> Resources:
    """`resources` with the local storage path and the teacher store absolute, as a resume from elsewhere needs."""
    storage = resources.storage_path
    if storage is not None and "://" not in storage:
        storage = str(Path(storage).resolve())
    return dataclasses.replace(resources, storage_path=storage,
                               teacher_store=str(Path(resources.teacher_store or default_store()).resolve()))


def load_record(root: Path) -> dict:
    path = Path(root) / RECORD
    if not path.is_file():
        raise UserError(f"{root} is not a kdtune experiment (no {RECORD}); nothing to resume")
    return json.loads(path.read_text())


def recorded_settings(record: dict) -> SweepSettings:
    return SweepSettings.from_dict(record["settings"])


def recorded_resources(record: dict, changes: dict) -> Resources:
    """The resources the experiment last ran with, changed by the placement options given to this --resume."""
    saved = record.get("resources")
    if saved is None:  # recorded before kdtune kept resources: only where Tune's state is, <storage-path>/<name>
        saved = {"storage_path": record["storage"].rstrip("/").rsplit("/", 1)[0]} if "storage" in record else {}
    return absolute(Resources(**{**saved, **changes}))


def start_record(previous: dict | None, settings: SweepSettings, resources: Resources, storage: str,
                 cache_mode: str) -> dict:
    """The record of a run about to train: a new one, or `previous` with this run's placement."""
    record = dict(previous or {})
    record.update(status="running", settings=settings.to_dict(), resources=dataclasses.asdict(resources),
                  storage=storage, cache_mode=cache_mode)
    record.setdefault("phases_started", [])
    return record


def check_tune_state(storage: str, phases_started: list[str]) -> None:
    """Fail, before any work, when Tune's state of a phase the record says started is not in `storage`."""
    from ray import tune

    for phase in phases_started:
        path = storage.rstrip("/") + "/" + phase
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
    words = ["python", "scripts/tune.py", "--resume", "--name", name]
    if str(results_dir) != DEFAULT_RESULTS_DIR:
        words += ["--results-dir", str(results_dir)]
    return shlex.join(words)
