"""The experiment record, `<results>/<name>/experiment.json`: what a sweep writes and every reader reads.

The sweep writes it (kdtune.sweep.resume) once a run has passed every check, and rewrites it as the run
goes; the report and a resume read it here, through one function that refuses a damaged file with one
line and brings the record of an older kdtune up to today's form (`upgrade`), so that no other module
needs to know what older versions wrote.  The search space is recorded as a `SearchSpace` (its fields
as JSON); the sweep parses YAML into it (kdtune.sweep.spaces).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from kdtune.engine.errors import UserError, first_line
from kdtune.engine.losses import METHODS

RECORD = "experiment.json"
TEACHER_CARD = "teacher_card.json"  # written by the sweep (kdtune.engine.teacher.teacher_card), read by the report
# The kdtune whose records carry `kdtune_version`; Tune pickled older experiments' trainables, searchers and
# schedulers under module paths that no longer exist, so they can be reported but not resumed.
RECORD_VERSION = 2
DEFAULT_METHOD = METHODS[0]  # a space, trial or record that names no method: plain KD
REQUIRED = ("settings", "storage")


@dataclass(frozen=True)
class SearchSpace:
    name: str
    kind: str  # "grid" or "optuna"
    fixed: dict[str, float | str]  # parameter -> value
    axes: dict[str, list[float | str]]  # grid: parameter -> values
    # optuna: parameter -> (distribution, low, high), or ("categorical", [choices])
    distributions: dict[str, tuple]
    description: str = ""

    @property
    def varied(self) -> list[str]:
        return list(self.axes) + list(self.distributions)

    @property
    def methods(self) -> list[str]:
        """The temperature methods the search can train (a space that names none: the first, plain KD)."""
        if "method" in self.axes:
            return list(self.axes["method"])
        if "method" in self.distributions:
            return list(self.distributions["method"][1])
        return [self.fixed.get("method", DEFAULT_METHOD)]

    def points(self) -> list[dict]:
        """Distilled grid points (each run with every seed); for Optuna, the fixed part of every point.

        A grid point with alpha = 0 is no distillation at all (its T is meaningless): it is the baseline,
        which runs with every seed anyway, so it is left out of the search."""
        points = [dict(self.fixed)]
        if self.kind == "grid":
            for param, values in self.axes.items():
                points = [{**p, param: v} for p in points for v in values]
        return [p for p in points if p.get("alpha", 1.0) > 0]


def describe_distribution(spec) -> str:
    """'loguniform[1, 20]' or 'one of kd, ls' (spec as stored, or as read back from JSON)."""
    if spec[0] == "categorical":
        return "one of " + ", ".join(map(str, spec[1]))
    return f"{spec[0]}[{spec[1]:g}, {spec[2]:g}]"


def format_value(value) -> str:
    return value if isinstance(value, str) else f"{value:g}"


def storage_child(storage: str, name: str) -> str:
    """`<storage>/<name>` for a folder or a URI: where Tune keeps a phase (or `--storage-path` an experiment)."""
    return storage.rstrip("/") + "/" + name


def planned_students(settings: dict, chosen: dict | None = None) -> dict:
    """Students of each phase: the baseline's seeds, the search's points x seeds, and the confirmation's
    re-measured configurations and baseline on fresh seeds — as recorded once chosen (`chosen`: the record's
    `confirm`), else as planned (`--confirm auto`: at most --max-confirm-seeds, one configuration)."""
    seeds = settings["seeds"]
    space = SearchSpace(**settings["space"])
    points = settings["num_samples"] if settings["search"] == "optuna" else len(space.points())
    return {"baseline": seeds, "sweep": seeds * points,
            "confirm": (1 + len(confirmed_configurations(chosen))) * confirm_seed_count(settings, chosen)}


def confirm_seed_count(settings: dict, chosen: dict | None = None) -> int:
    """Fresh seeds per re-measured configuration: the recorded choice's, a fixed --confirm K, or, before an
    automatic one is sized, its cap."""
    if chosen:
        return len(chosen["seeds"])
    confirm = settings.get("confirm", 0)
    return settings.get("max_confirm_seeds", 0) if confirm == "auto" else int(confirm)


def confirmed_configurations(chosen: dict | None) -> list[dict]:
    """The configurations a confirmation re-measures (the chosen one first, then others tied with it); a
    record of a kdtune that re-measured one names only that one."""
    if not chosen:
        return [{}]  # planned: one configuration
    return chosen.get("configurations") or [{k: chosen[k] for k in ("temperature", "alpha", "method") if k in chosen}]


def read_record(root: str | Path) -> dict:
    """The record of the experiment at `root`, in today's form; one UserError line when there is none or it is
    damaged (not JSON, not UTF-8, not a mapping, a required part missing)."""
    path = Path(root) / RECORD
    if not path.is_file():
        raise UserError(f"{root} is not a kdtune experiment (no {RECORD})")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({first_line(error)}): the record is damaged") from None
    missing = [key for key in REQUIRED if not isinstance(record, dict) or key not in record]
    if missing or not isinstance(record.get("settings"), dict) or "space" not in record["settings"]:
        raise UserError(f"{path} is not a kdtune experiment record (no {', '.join(missing or ['settings.space'])})")
    return upgrade(record)


def is_older(record: dict) -> bool:
    """Whether an earlier kdtune (before the packages, 0.1.x) started the experiment: reportable, not resumable."""
    return record.get("kdtune_version", 1) < RECORD_VERSION


def upgrade(record: dict) -> dict:
    """An older kdtune's record in today's form: every compatibility rule for records lives here."""
    settings = dict(record["settings"])
    space = dict(settings["space"])
    for part in ("fixed", "axes", "distributions"):
        space.setdefault(part, {})
    settings["space"] = space
    settings.setdefault("confirm", 0)
    settings.setdefault("ctkd_range", [1.0, 21.0])
    settings.setdefault("ctkd_ramp_epochs", None)
    settings.setdefault("pack", 0)
    settings.setdefault("teacher_aug_seed", 0)  # before two streams the teacher trained on the students' (0)
    return {**record, "settings": settings}


def trial_method(config: dict) -> str:
    """A trial config's method: trials of a kdtune before the methods axis name none and are plain KD."""
    return str(config.get("method", DEFAULT_METHOD))


def trial_seed(config: dict) -> int:
    """A trial config's seed; a kdtune before packs named it `__trial_index__`."""
    return int(config.get("__trial_index__", config.get("seed", 0)))


def is_old_alpha_zero_trial(phase: str, alpha: float) -> bool:
    """A search trial with alpha = 0, which a kdtune that trained such grid points wrote: no distilled
    configuration, only a copy of a baseline seed."""
    return phase == "sweep" and alpha == 0 and not math.isnan(alpha)
