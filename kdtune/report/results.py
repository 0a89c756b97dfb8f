"""Reading an experiment's results: one row per trial, and the summary files.

Reads Tune's experiment folders directly with `ray.tune.ExperimentAnalysis`,
so it works on finished, interrupted and running experiments, local or on
remote storage, without a Ray cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kdtune.engine.atomic import atomic_write, save_json
from kdtune.engine.pack import member_names
from kdtune.report.record import is_old_alpha_zero_trial, storage_child, trial_method, trial_seed
from kdtune.report.stats import PHASES, method_order

TRIAL_COLUMNS = [
    "phase", "trial_id", "method", "temperature", "alpha", "seed", "status", "outcome", "epochs_run", "failures",
    "final_val_acc", "final_test_acc", "best_val_acc", "best_epoch", "test_acc_at_best_val",
    "final_agreement", "final_val_ece", "final_val_nll", "final_learned_temperature",
    "final_test_agreement", "final_test_kl", "final_test_inherited_errors",
    "pack_mode", "pack_loop_images_per_s", "pack_stack_images_per_s",
]
PACK_COLUMNS = ("pack_mode", "pack_loop_images_per_s", "pack_stack_images_per_s")  # kdtune.engine.pack.PackModeChoice
TRIAL_SUMMARY = "summary.csv"  # the experiment's per-trial table (the report's own summary.csv is per configuration)


def trial_frames(storage: str, phase: str) -> list[tuple[object, pd.DataFrame]]:
    """[(trial, per-epoch results)] of one phase, one per (configuration, seed); [] when the phase has not
    started.  A packed Tune trial (several seeds, see kdtune.sweep.trainable) is unpacked into its members."""
    from ray.tune import ExperimentAnalysis

    path = storage_child(storage, phase)
    try:
        analysis = ExperimentAnalysis(path)
    except (ValueError, FileNotFoundError, OSError):
        return []
    pairs = []
    for trial in analysis.trials:
        frame = analysis.trial_dataframes.get(trial.trial_id, pd.DataFrame())
        pairs += unpack(trial, frame) if "seeds" in trial.config or "members" in trial.config else [(trial, frame)]
    return pairs


@dataclass(frozen=True)
class Member:
    """One student of a packed Tune trial, with the attributes of a Tune trial that the results read."""

    trial_id: str  # the pack's id and the member's name (s<seed>, or m<i> in a --pack N trial)
    config: dict  # the member's own: the pack's config with its "seed", or its entry of the pack's "members"
    status: str  # the pack's
    num_failures: int
    experiment_tag: str
    phase: str | None = None  # --pack N packs baseline students into the sweep's trials; None: the folder's phase


def unpack(trial, frame: pd.DataFrame) -> list[tuple[Member, pd.DataFrame]]:
    """A pack's members, each with its own per-epoch frame (`<name>/<metric>` columns renamed to `<metric>`)."""
    if "members" in trial.config:
        configs = [dict(m) for m in trial.config["members"]]
        names = member_names(None, len(configs))
    else:
        shared = {k: v for k, v in trial.config.items() if k != "seeds"}
        configs = [shared | {"seed": int(seed)} for seed in trial.config["seeds"]]
        names = member_names(trial.config["seeds"], len(configs))
    members = []
    for name, config in zip(names, configs):
        prefix = f"{name}/"
        phase = config.pop("phase", None)
        member = Member(f"{trial.trial_id}_{name}", config, trial.status, int(getattr(trial, "num_failures", 0)),
                        str(getattr(trial, "experiment_tag", "")), phase)
        own = [c for c in frame.columns if c.startswith(prefix)]
        if frame.empty or not own:
            members.append((member, pd.DataFrame()))
            continue
        part = frame[own].rename(columns=lambda c: c[len(prefix):])
        for column in PACK_COLUMNS:  # the pack's, said once per report: each member trained the same way
            if column in frame:
                part[column] = frame[column].to_numpy()
        part = part.assign(temperature=float(config.get("temperature", math.nan)), alpha=float(config["alpha"]),
                           seed=int(config["seed"]), method=trial_method(config))
        members.append((member, part.dropna(subset=["epoch"])))
    return members


def trial_table(record: dict, frames: dict | None = None) -> pd.DataFrame:
    """One row per trial of every phase: its config, status, epochs run, final and best metrics.

    A search trial with alpha = 0 (written by kdtune versions that trained such grid points) is left out.

    `frames` ({phase: trial_frames(...)}) reuses results already read, so a caller reads the experiment once.
    """
    full_epochs = record["settings"]["epochs"]
    rows = []
    for folder in PHASES:
        for trial, frame in (frames[folder] if frames is not None else trial_frames(record["storage"], folder)):
            phase = getattr(trial, "phase", None) or folder
            config = trial.config
            row = {
                "phase": phase, "trial_id": trial.trial_id, "status": trial.status,
                "method": trial_method(config),
                "temperature": float(config.get("temperature", math.nan)), "alpha": float(config.get("alpha", math.nan)),
                "seed": trial_seed(config),
                "failures": int(getattr(trial, "num_failures", 0)), "epochs_run": 0,
            }
            if not frame.empty:
                frame = frame.drop_duplicates("epoch", keep="last").sort_values("epoch")  # retries re-report epochs
                last = frame.iloc[-1]
                best = frame.loc[frame["val_acc"].idxmax()]
                # The test set is evaluated after the last epoch (and every --test-every epochs): NaN elsewhere.
                row.update(
                    temperature=float(last["temperature"]), alpha=float(last["alpha"]), seed=int(last["seed"]),
                    epochs_run=int(last["epoch"]), final_val_acc=last["val_acc"],
                    final_test_acc=last.get("test_acc", math.nan), best_val_acc=best["val_acc"],
                    best_epoch=int(best["epoch"]), test_acc_at_best_val=best.get("test_acc", math.nan),
                    final_agreement=last.get("agreement", math.nan), final_val_ece=last["val_ece"],
                    final_val_nll=last["val_nll"], final_learned_temperature=last.get("learned_temperature", math.nan),
                    final_test_agreement=last.get("test_agreement", math.nan), final_test_kl=last.get("test_kl", math.nan),
                    final_test_inherited_errors=last.get("test_inherited_errors", math.nan),
                    **{column: last.get(column) for column in PACK_COLUMNS},
                )
                diverged = bool(frame["diverged"].astype(bool).any()) if "diverged" in frame else False
            else:
                diverged = False
            row["outcome"] = _outcome(trial.status, row["epochs_run"], full_epochs, diverged)
            if not is_old_alpha_zero_trial(phase, row["alpha"]):
                rows.append(row)
    return pd.DataFrame(rows, columns=TRIAL_COLUMNS)


def _outcome(status: str, epochs_run: int, full_epochs: int, diverged: bool) -> str:
    if diverged:
        return "diverged"
    if status == "TERMINATED":
        return "finished" if epochs_run >= full_epochs else "stopped early"
    if status == "PENDING" and epochs_run > 0:
        # Tune saves a running trial as PENDING (so that a restore restarts it): it has started.
        return "in progress"
    return {"ERROR": "errored", "RUNNING": "running", "PENDING": "pending", "PAUSED": "paused"}.get(status, status.lower())


def write_trial_summary(root: Path, record: dict, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """summary.csv (one row per trial) and temperature_results.json / baselines.json in the seed's format."""
    table = trial_table(record) if table is None else table
    atomic_write(Path(root) / TRIAL_SUMMARY, lambda tmp: table.to_csv(tmp, index=False))
    save_json(Path(root) / "temperature_results.json", temperature_results(table, record))
    baseline = table[(table["phase"] == "baseline") & (table["outcome"] == "finished")]
    save_json(Path(root) / "baselines.json", {
        "teacher": {"val_acc": record["teacher"]["val_acc"], "test_acc": record["teacher"]["test_acc"]},
        "no_kd_student": {
            "seeds": int(len(baseline)),
            "val_acc": float(baseline["final_val_acc"].mean()) if len(baseline) else None,
            "test_acc": float(baseline["final_test_acc"].mean()) if len(baseline) else None,
        },
    })
    return table


def temperature_results(table: pd.DataFrame, record: dict) -> dict:
    """The seed's `{"T": mean test accuracy}` of the search's finished distilled students; when alpha
    varies, one such mapping per alpha: `{"alpha": {"T": ...}}`; when the method varies, one such result
    per method: `{"kd": ..., "ls": ...}`."""
    distilled = table[(table["phase"] == "sweep") & (table["outcome"] == "finished") & (table["alpha"] > 0)]
    space = record["settings"]["space"]
    varied = set(space["axes"]) | set(space["distributions"])

    def curve(rows: pd.DataFrame) -> dict:
        if "alpha" not in varied:
            return {f"{t:g}": float(v) for t, v in rows.groupby("temperature")["final_test_acc"].mean().items()}
        return {f"{a:g}": {f"{t:g}": float(v) for t, v in part.groupby("temperature")["final_test_acc"].mean().items()}
                for a, part in rows.groupby("alpha")}

    if "method" not in varied:
        return curve(distilled)
    return {method: curve(distilled[distilled["method"] == method]) for method in method_order(distilled["method"])}
