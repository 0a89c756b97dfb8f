"""What a report is made from: an experiment folder read once (`load_experiment`), and its headline numbers.

Reads the record through `kdtune.report.record` and Tune's experiment folders through `kdtune.report.results`
(no Ray cluster needed), so it works on finished, interrupted and running experiments, local or remote.
When Tune's folders are gone (a committed example keeps only its record and summary.csv), the trials are
rebuilt from the experiment's own summary.csv, without the per-epoch results that only Tune's folders hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kdtune.engine.errors import UserError
from kdtune.report.record import RECORD, confirm_seed_count, read_record
from kdtune.report.results import TRIAL_COLUMNS, TRIAL_SUMMARY, trial_frames, trial_table
from kdtune.report.stats import PHASES, planned_seeds

EPOCH_COLUMNS = ["epoch", "val_acc", "test_acc", "val_ece", "agreement", "learned_temperature"]


@dataclass
class Experiment:
    """What a report is made from: the record, one row per trial, and one row per trial and epoch."""

    root: Path
    record: dict
    trials: pd.DataFrame  # kdtune.report.results.trial_table, plus trial_number (Tune's creation order)
    epochs: pd.DataFrame  # phase, trial_id and EPOCH_COLUMNS, one row per epoch reported
    tune_trials: pd.DataFrame | None = None  # kdtune.report.results.trial_table exactly, for the experiment's summary.csv
    rebuilt_from: Path | None = None  # the summary.csv the trials were read from when Tune's folders are missing

    @property
    def settings(self) -> dict:
        return self.record["settings"]

    @property
    def planned_seeds(self) -> dict:
        """Seeds per configuration of each phase (what makes a configuration complete)."""
        return planned_seeds(self.settings["seeds"], confirm_seed_count(self.settings, self.record.get("confirm")))

    @property
    def varied(self) -> list[str]:
        """The swept parameters: grid axes or Optuna distributions."""
        space = self.settings["space"]
        return list(space["axes"]) + list(space["distributions"])


# ----------------------------------------------------------------------------- reading


def load_experiment(root: str | Path) -> Experiment:
    """Read an experiment folder; UserError when it is none or no trial has finished an epoch."""
    root = Path(root)
    if root.name == RECORD and root.is_file():
        root = root.parent
    record = read_record(root)
    if "teacher" not in record:
        raise UserError(f"experiment {root}: nothing to report yet (it stopped before its teacher was ready)")
    frames = {phase: trial_frames(record["storage"], phase) for phase in PHASES}
    saved = root / TRIAL_SUMMARY
    if not any(frames.values()) and saved.is_file():
        return rebuilt_experiment(root, record, saved)
    epochs = epoch_table(frames)
    if epochs.empty:
        raise UserError(f"experiment {root}: no finished epoch in {record['storage'].rstrip('/')}/"
                        f"{{{','.join(PHASES)}}} (no trial has finished one yet, or that storage cannot be read)")
    tune_trials = trial_table(record, frames)
    trials = tune_trials.copy()
    numbers = {trial.trial_id: trial_number(trial, i)
               for pairs in frames.values() for i, (trial, _) in enumerate(pairs)}
    trials["trial_number"] = [numbers[t] for t in trials["trial_id"]]
    return Experiment(root, record, trials, epochs, tune_trials)


def rebuilt_experiment(root: Path, record: dict, saved: Path) -> Experiment:
    """The experiment as its per-trial summary.csv (kdtune.report.results.trial_table's columns) recorded it:
    no per-epoch table, and trials numbered in the file's order within each phase."""
    trials = pd.read_csv(saved).reindex(columns=TRIAL_COLUMNS)
    if trials.empty:
        raise UserError(f"experiment {root}: no Tune folders under {record['storage']} and no trial in {saved}")
    trials["trial_id"] = trials["trial_id"].astype(str)
    trials["method"] = trials["method"].astype(object)  # an older table has none: empty, read as plain KD
    trials["trial_number"] = trials.groupby("phase").cumcount()
    epochs = pd.DataFrame(columns=["phase", "trial_id", *EPOCH_COLUMNS])
    return Experiment(root, record, trials, epochs, None, saved)


def trial_number(trial, position: int) -> int:
    """The order Tune created the trial in: the counter its experiment tag starts with ('3_alpha=0.6,...')."""
    head = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return int(head) if head.isdigit() else position


def epoch_table(frames: dict) -> pd.DataFrame:
    """One row per trial and epoch; a retried trial's re-reported epochs count once (the last report)."""
    parts = []
    for phase, pairs in frames.items():
        for trial, frame in pairs:
            if frame.empty or "epoch" not in frame:
                continue
            frame = frame.drop_duplicates("epoch", keep="last").sort_values("epoch")
            part = frame.reindex(columns=EPOCH_COLUMNS)
            parts.append(part.assign(phase=getattr(trial, "phase", None) or phase, trial_id=trial.trial_id))
    if not parts:
        return pd.DataFrame(columns=["phase", "trial_id", *EPOCH_COLUMNS])
    return pd.concat(parts, ignore_index=True)[["phase", "trial_id", *EPOCH_COLUMNS]]



@dataclass
class Headline:
    """The numbers above the table: teacher, no-KD student, the chosen configuration and its paired gain."""

    teacher: dict  # val_acc, test_acc
    baseline: dict | None  # the baseline row of the config table; None before a baseline seed finished
    best: dict | None  # the complete search row with the most correct validation images (ties: TIE_RULE); None before any
    competed: int  # search configurations that competed (started), complete or not
    complete: int  # of which every seed finished: those that could be chosen
    confirm: dict | None = None  # the confirmation's distilled row (fresh seeds), when it has run
    confirm_baseline: dict | None = None
    per_method: dict | None = None  # when the method varies: {method: its best complete configuration}
    ties: list[dict] = field(default_factory=list)  # every complete row as good as `best` (itself included)
    confirm_search: dict | None = None  # the search's row of the configuration the confirmation re-measured
    confirm_others: list[dict] = field(default_factory=list)  # other configurations tied with it, re-measured too

    @property
    def gain(self) -> float | None:
        """The search's own estimate of the chosen configuration's gain: optimistic, since it was selected."""
        return finite(self.best, "gain_mean")

    @property
    def quoted(self) -> dict | None:
        """The row whose gain a paper should quote: the confirmation's when it ran, else the search's."""
        return self.confirm if finite(self.confirm, "gain_mean") is not None else self.best


def finite(row: dict | None, key: str) -> float | None:
    if row is None or row.get(key) is None or not math.isfinite(row[key]):
        return None
    return float(row[key])
