"""The report of an experiment: the per-configuration table, the headline comparison, the files.

    python scripts/report.py results/<name>   ->   results/<name>/report/summary.{md,csv} and figures

Reads Tune's experiment folders through `kdtune.results` (no Ray cluster needed), so it works on
finished, interrupted and running experiments, local or on remote storage.  A configuration is one
(phase, T, alpha); its statistics are over the seeds that *finished* (ran every epoch): trials ASHA
stopped early, errored, diverged or still running are counted, never averaged in.  Accuracies are
fractions in summary.csv and percentages in summary.md and the figures (drawn by kdtune.report_plots).

summary.csv, one row per configuration: phase, temperature, alpha, trials, seeds_finished; mean, std
(and for val_acc / test_acc the 95% CI half-width, t distribution, NaN below 2 seeds) of the final
val_acc, test_acc, agreement and val_ece and of the best-epoch best_epoch_val_acc /
best_epoch_test_acc (the epoch of highest validation accuracy: optimistic); epochs_run_min/max; and
one count column per outcome.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kdtune.atomic import atomic_write
from kdtune.errors import UserError
from kdtune.results import PHASES, read_record, trial_frames, trial_table, write_trial_summary

FORMATS = ("png", "pdf", "svg")
OUTCOMES = ("finished", "stopped early", "diverged", "errored", "in progress", "running", "pending", "paused")
CONFIG_KEYS = ["phase", "temperature", "alpha"]
EPOCH_COLUMNS = ["epoch", "val_acc", "test_acc", "val_ece", "agreement"]
# Statistics over finished seeds: summary.csv column -> trial_table column.
STATISTICS = {
    "val_acc": "final_val_acc", "test_acc": "final_test_acc",
    "best_epoch_val_acc": "best_val_acc", "best_epoch_test_acc": "test_acc_at_best_val",
    "agreement": "final_agreement", "val_ece": "final_val_ece",
}
SIGNIFICANCE = 0.05  # Welch's t-test level for "larger than the seed-to-seed spread"


@dataclass
class Experiment:
    """What a report is made from: the record, one row per trial, and one row per trial and epoch."""

    root: Path
    record: dict
    trials: pd.DataFrame  # kdtune.results.trial_table, plus trial_number (Tune's creation order)
    epochs: pd.DataFrame  # phase, trial_id and EPOCH_COLUMNS, one row per epoch reported
    tune_trials: pd.DataFrame | None = None  # kdtune.results.trial_table exactly, for the experiment's summary.csv

    @property
    def settings(self) -> dict:
        return self.record["settings"]

    @property
    def varied(self) -> list[str]:
        """The swept parameters: grid axes or Optuna distributions."""
        space = self.settings["space"]
        return list(space["axes"]) + list(space["distributions"])


# ----------------------------------------------------------------------------- reading


def load_experiment(root: str | Path) -> Experiment:
    """Read an experiment folder; UserError when it is none or no trial has finished an epoch."""
    root = Path(root)
    if root.name == "experiment.json" and root.is_file():
        root = root.parent
    try:
        record = read_record(root)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{root / 'experiment.json'} is not valid JSON: {error}") from None
    missing = [key for key in ("settings", "teacher", "storage") if not isinstance(record, dict) or key not in record]
    if missing:
        raise UserError(f"{root / 'experiment.json'} is not a kdtune experiment record (no {', '.join(missing)})")
    frames = {phase: trial_frames(record["storage"], phase) for phase in PHASES}
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
            parts.append(part.assign(phase=phase, trial_id=trial.trial_id))
    if not parts:
        return pd.DataFrame(columns=["phase", "trial_id", *EPOCH_COLUMNS])
    return pd.concat(parts, ignore_index=True)[["phase", "trial_id", *EPOCH_COLUMNS]]


# ----------------------------------------------------------------------------- statistics


def ci95(std: float, n: int) -> float:
    """Half-width of the 95% confidence interval of a mean of n seeds (t distribution); NaN below 2 seeds."""
    from scipy import stats

    if n < 2 or not math.isfinite(std):
        return math.nan
    return float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def config_table(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: trials, finished seeds, mean/std/CI of the statistics, epochs, outcome counts."""
    keys = CONFIG_KEYS
    finished = trials[trials["outcome"] == "finished"]
    aggregations = {"seeds_finished": ("trial_id", "size")}
    for name, column in STATISTICS.items():
        aggregations[f"{name}_mean"] = (column, "mean")
        aggregations[f"{name}_std"] = (column, "std")
    stats = finished.groupby(keys, dropna=False).agg(**aggregations)
    for name in ("val_acc", "test_acc"):
        stats[f"{name}_ci95"] = [ci95(s, n) for s, n in zip(stats[f"{name}_std"], stats["seeds_finished"])]
    everything = trials.groupby(keys, dropna=False).agg(
        trials=("trial_id", "size"), epochs_run_min=("epochs_run", "min"), epochs_run_max=("epochs_run", "max"),
    )
    counts = trials.groupby([*keys, "outcome"], dropna=False).size().unstack(fill_value=0)
    counts = counts.reindex(columns=list(OUTCOMES), fill_value=0)
    counts.columns = [c.replace(" ", "_") for c in counts.columns]
    table = everything.join(stats).join(counts)
    table["seeds_finished"] = table["seeds_finished"].fillna(0).astype(int)
    table = table.reset_index()
    table["phase"] = pd.Categorical(table["phase"], categories=list(PHASES), ordered=True)
    table = table.sort_values(keys).reset_index(drop=True)
    table["phase"] = table["phase"].astype(str)
    return table[summary_columns()]


def summary_columns() -> list[str]:
    stats = []
    for name in STATISTICS:
        stats += [f"{name}_mean", f"{name}_std"] + ([f"{name}_ci95"] if name in ("val_acc", "test_acc") else [])
    return [*CONFIG_KEYS, "trials", "seeds_finished", *stats, "epochs_run_min", "epochs_run_max",
            *[o.replace(" ", "_") for o in OUTCOMES]]


def welch_p(a, b) -> float | None:
    """Welch's t-test p-value of two samples of seeds; None with fewer than 2 in either or no spread at all."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return None
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return p if math.isfinite(p) else None


@dataclass
class Headline:
    """The numbers above the table: teacher, no-KD student, best configuration and whether its gain is real."""

    teacher: dict  # val_acc, test_acc
    baseline: dict | None  # the baseline row of the config table; None before a baseline seed finished
    best: dict | None  # the sweep row with the best mean validation accuracy; None before any finished
    gain: float | None  # best test_acc_mean - baseline test_acc_mean
    p_value: float | None  # Welch's t-test on the finished seeds' final test accuracies


def headline(trials: pd.DataFrame, configs: pd.DataFrame, teacher: dict) -> Headline:
    rows = configs[configs["seeds_finished"] > 0]
    baseline = rows[rows["phase"] == "baseline"]
    sweep = rows[rows["phase"] == "sweep"]
    base = baseline.iloc[0].to_dict() if len(baseline) else None
    best = sweep.loc[sweep["val_acc_mean"].idxmax()].to_dict() if len(sweep) else None
    gain = p = None
    if base is not None and best is not None:
        gain = best["test_acc_mean"] - base["test_acc_mean"]
        p = welch_p(seed_values(trials, best, "final_test_acc"), seed_values(trials, base, "final_test_acc"))
    return Headline({k: teacher[k] for k in ("val_acc", "test_acc")}, base, best, gain, p)


def seed_values(trials: pd.DataFrame, config: dict, column: str) -> np.ndarray:
    """The finished seeds' values of `column` for one configuration (a row of the config table)."""
    mask = (trials["outcome"] == "finished") & (trials["phase"] == config["phase"])
    for key in ("temperature", "alpha"):
        mask &= trials[key] == config[key]
    return trials.loc[mask, column].to_numpy(dtype=float)


# ----------------------------------------------------------------------------- summary.md


def pct(value, std=None, digits: int = 2) -> str:
    """A fraction as a percentage, 'mean ± std' when a std is known; '—' when there is no value."""
    if value is None or not math.isfinite(value):
        return "—"
    text = f"{100 * value:.{digits}f}"
    return text + (f" ± {100 * std:.{digits}f}" if std is not None and math.isfinite(std) else "")


def config_label(row: dict) -> str:
    if row["phase"] == "baseline":
        return "no KD (α = 0)"
    return f"T = {row['temperature']:.3g}, α = {row['alpha']:.3g}"


def describe_experiment(exp: Experiment) -> str:
    s = exp.settings
    space = s["space"]
    varied = [f"{k} ∈ {{{', '.join(f'{v:g}' for v in vals)}}}" for k, vals in space["axes"].items()]
    varied += [f"{k} ~ {d}[{lo:g}, {hi:g}]" for k, (d, lo, hi) in space["distributions"].items()]
    fixed = [f"{k} = {v:g}" for k, v in space["fixed"].items()]
    search = "grid search" if s["search"] == "grid" else f"Optuna search ({s['num_samples']} points, {s['sampler']})"
    asha = f", ASHA early stopping (grace {_count(s['grace_period'], 'epoch')})" if s["asha"] else ""
    return (f"{search} over {'; '.join(varied + fixed)}{asha}. Students {s['student']} ({s['recipe']}, "
            f"{_count(s['epochs'], 'epoch')}), teacher {s['teacher']} ({_count(s['teacher_epochs'], 'epoch')}), "
            f"{_count(s['seeds'], 'seed')} per configuration.")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def progress_line(exp: Experiment) -> str:
    """How many trials have each outcome, against the plan ('of N planned')."""
    from kdtune.sweep import SweepSettings, plan

    counts = exp.trials["outcome"].value_counts()
    parts = [f"{counts[o]} {o}" for o in [*OUTCOMES, *sorted(set(counts.index) - set(OUTCOMES))] if o in counts]
    try:
        planned = plan(SweepSettings.from_dict(exp.settings))
    except (TypeError, KeyError, UserError):  # settings of another kdtune version: no plan to compare with
        return f"Trials: {', '.join(parts)}."
    total = planned["baseline_trials"] + planned["sweep_trials"]
    if total > len(exp.trials):
        parts.append(f"{total - len(exp.trials)} not started yet")
    return f"Trials: {', '.join(parts)} (of {total} planned)."


def verdict(h: Headline, one_seed: bool) -> str:
    """Whether the best configuration's test gain over the no-KD student is larger than seed-to-seed noise."""
    if h.gain is None:
        return "Gain over the no-KD student: not known yet (needs a finished no-KD seed and a finished distilled seed)."
    gain = f"Gain over the no-KD student: {100 * h.gain:+.2f} points of test accuracy"
    if h.p_value is None:
        why = "one seed per configuration" if one_seed else "fewer than 2 finished seeds on a side, or no spread"
        return f"{gain}; cannot be told from seed-to-seed noise ({why}: no Welch's t-test)."
    welch = f"Welch's t-test p = {h.p_value:.3g}"
    if h.p_value < SIGNIFICANCE:
        return f"{gain}, {'larger than' if h.gain > 0 else 'a loss larger than'} the seed-to-seed spread ({welch})."
    return f"{gain}, within noise ({welch} ≥ {SIGNIFICANCE:g})."


def summary_markdown(exp: Experiment, configs: pd.DataFrame, h: Headline, figures: list[str],
                     skipped: list[str]) -> str:
    one_seed = int(exp.settings["seeds"]) == 1
    lines = [f"# Report: {exp.settings['name']}", "", describe_experiment(exp), "", progress_line(exp), ""]
    lines.append(f"- Teacher {exp.settings['teacher']} (one model): validation {pct(h.teacher['val_acc'])}%, "
                 f"test {pct(h.teacher['test_acc'])}%")
    if h.baseline is None:
        lines.append("- No-KD student: no finished seed yet")
    else:
        lines.append(f"- No-KD student ({_count(h.baseline['seeds_finished'], 'seed')}): {_accuracies(h.baseline)}")
    if h.best is None:
        lines.append("- Best configuration: none has a finished seed yet")
    else:
        lines.append(f"- Best configuration by validation accuracy: **{config_label(h.best)}** "
                     f"({_count(h.best['seeds_finished'], 'seed')}): {_accuracies(h.best, bold_test=True)}")
    lines.append(f"- {verdict(h, one_seed)}")
    if one_seed:
        lines.append("- One seed per configuration: no standard deviations, confidence bands or significance tests.")
    lines += ["", markdown_table(configs), "",
              "Accuracies in %, mean ± std over finished seeds (final epoch); ECE in % on validation; agreement: "
              "top-1 agreement with the teacher on validation.", "",
              "† Best epoch: the epoch with the highest validation accuracy, picked after training — optimistic, "
              "not a result to report as the model's accuracy (picking the epoch on the test set would inflate it "
              "further).",
              ""]
    if (configs["in_progress"] > 0).any():
        lines += ["In progress: started but not finished — running now, or interrupted mid-run.", ""]
    if figures:
        lines += ["Figures: " + ", ".join(figures), ""]
    if skipped:
        lines += ["Not drawn:", *[f"- {reason}" for reason in skipped]]
    return "\n".join(lines).rstrip() + "\n"


def _accuracies(row: dict, bold_test: bool = False) -> str:
    test = f"test {pct(row['test_acc_mean'], row['test_acc_std'])}%"
    return f"validation {pct(row['val_acc_mean'], row['val_acc_std'])}%, " + (f"**{test}**" if bold_test else test)


def markdown_table(configs: pd.DataFrame) -> str:
    header = ["configuration", "seeds finished", "val acc", "test acc", "best-epoch val †",
              "test at best-val epoch †", "agreement", "ECE", "epochs", "status"]
    rows = [header, ["---"] * len(header)]
    for row in configs.to_dict("records"):
        epochs = f"{row['epochs_run_min']}" if row["epochs_run_min"] == row["epochs_run_max"] else \
            f"{row['epochs_run_min']}–{row['epochs_run_max']}"
        status = ", ".join(f"{row[o.replace(' ', '_')]} {o}" for o in OUTCOMES if row[o.replace(" ", "_")])
        rows.append([
            config_label(row), f"{row['seeds_finished']}/{row['trials']}",
            pct(row["val_acc_mean"], row["val_acc_std"]), pct(row["test_acc_mean"], row["test_acc_std"]),
            pct(row["best_epoch_val_acc_mean"]), pct(row["best_epoch_test_acc_mean"]),
            pct(row["agreement_mean"], digits=1), pct(row["val_ece_mean"], digits=1), epochs, status,
        ])
    return "\n".join("| " + " | ".join(map(str, r)) + " |" for r in rows)


# ----------------------------------------------------------------------------- the report


def write_report(root: str | Path, out: str | Path | None = None, fmt: str = "png") -> dict:
    """Write summary.md, summary.csv and the figures into `out` (default root/report); refresh the
    experiment's per-trial summary.csv and temperature_results.json.  Returns what was written."""
    from kdtune import report_plots

    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    exp = load_experiment(root)
    out = Path(out) if out is not None else exp.root / "report"
    write_trial_summary(exp.root, exp.record, exp.tune_trials)
    configs = config_table(exp.trials)
    h = headline(exp.trials, configs, exp.record["teacher"])
    figures, skipped = report_plots.draw_all(exp, configs, h, out, fmt)
    markdown = summary_markdown(exp, configs, h, [p.name for p in figures], skipped)
    atomic_write(out / "summary.csv", lambda tmp: configs.to_csv(tmp, index=False))
    atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(markdown))
    return {"out": out, "markdown": markdown, "configs": configs, "figures": figures, "skipped": skipped}
