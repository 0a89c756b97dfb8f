"""The report of an experiment: the per-configuration table, the headline comparison, the files.

    kdtune report results/<name>   ->   results/<name>/report/summary.{md,csv} and figures

Reads Tune's experiment folders through `kdtune.report.results` (no Ray cluster needed), so it works on
finished, interrupted and running experiments, local or on remote storage.  The statistics (finished
seeds only, paired gains over the no-KD baseline, Holm's correction, which configuration may be
chosen) are `kdtune.report.stats`'s; the figures are drawn by `kdtune.report.figures`.  Accuracies are
fractions in summary.csv and percentages in summary.md and the figures.

summary.csv, one row per configuration: phase, method, temperature, alpha, trials, seeds_finished, complete
(every planned seed finished: only complete configurations can be chosen); mean, std (and for
val_acc / test_acc the 95% CI half-width, t distribution, NaN below 2 seeds) of the final val_acc,
test_acc, agreement, val_ece and (ctkd) the learned temperature, and of the best-epoch best_epoch_val_acc /
best_epoch_test_acc (the
epoch of highest validation accuracy: optimistic); the paired gain in final test accuracy over the
no-KD students of the same seeds (gain_pairs, gain_mean, gain_ci95, p_paired) and its Holm-adjusted
p-value over the search's configurations (p_holm); epochs_run_min/max; one count column per outcome.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from kdtune.engine.atomic import atomic_write
from kdtune.engine.config import ctkd_ramp_epochs
from kdtune.engine.errors import UserError
from kdtune.report.experiment import Experiment, Headline, load_experiment
from kdtune.report.record import SearchSpace, describe_distribution, format_value, planned_students
from kdtune.report.results import write_trial_summary
from kdtune.report.stats import (
    OUTCOMES,
    SIGNIFICANCE,
    baseline_row_of,
    best_per_method,
    choose_best,
    config_table,
    incomplete_reasons,
    summary_columns,
)

FORMATS = ("png", "pdf", "svg")
METHOD_NAME = {"kd": "KD", "ls": "LS", "ctkd": "CTKD"}
__all__ = ["OUTCOMES", "config_table", "summary_columns", "write_report", "load_experiment", "headline"]


# ----------------------------------------------------------------------------- the headline


def headline(configs: pd.DataFrame, teacher: dict) -> Headline:
    baseline = configs[(configs["phase"] == "baseline") & (configs["seeds_finished"] > 0)]
    sweep = configs[configs["phase"] == "sweep"]
    confirm = configs[(configs["phase"] == "confirm") & (configs["alpha"] > 0) & (configs["seeds_finished"] > 0)]
    confirm_base = baseline_row_of(configs, "confirm")
    return Headline(
        {k: teacher[k] for k in ("val_acc", "test_acc")},
        baseline.iloc[0].to_dict() if len(baseline) else None,
        choose_best(configs),
        competed=len(sweep), complete=int(sweep["complete"].sum()),
        confirm=confirm.iloc[0].to_dict() if len(confirm) else None,
        confirm_baseline=confirm_base if confirm_base and confirm_base["seeds_finished"] > 0 else None,
        per_method=best_per_method(configs) if sweep["method"].nunique() > 1 else None,
    )


# ----------------------------------------------------------------------------- summary.md


def pct(value, std=None, digits: int = 2) -> str:
    """A fraction as a percentage, 'mean ± std' when a std is known; '—' when there is no value."""
    if value is None or not math.isfinite(value):
        return "—"
    text = f"{100 * value:.{digits}f}"
    return text + (f" ± {100 * std:.{digits}f}" if std is not None and math.isfinite(std) else "")


def config_label(row: dict, show_method: bool = False) -> str:
    """'T = 4, α = 0.5'; with the method ('LS: T = 2, α = 0.9') when asked or when it is not plain KD. A CTKD
    configuration's T is its learned temperature's start, T₀."""
    if row["phase"] == "baseline":
        return "no KD (α = 0)"
    method = row.get("method", "kd")
    if row["alpha"] == 0:
        label = "no KD (α = 0)"
    else:
        t = "T₀" if method == "ctkd" else "T"
        label = f"{t} = {row['temperature']:.3g}, α = {row['alpha']:.3g}"
        if show_method or method != "kd":
            label = f"{METHOD_NAME.get(method, method)}: {label}"
    return f"confirmation: {label}, fresh seeds" if row["phase"] == "confirm" else label


def learned_text(row: dict) -> str:
    """' (learned T 20.8 ± 0.1)' for a CTKD row with finished seeds, else ''."""
    mean = row.get("learned_temperature_mean", math.nan)
    if mean is None or not math.isfinite(mean):
        return ""
    std = row.get("learned_temperature_std", math.nan)
    return f" (learned T {mean:.2f}" + (f" ± {std:.2f})" if math.isfinite(std) else ")")


def describe_experiment(exp: Experiment) -> str:
    s = exp.settings
    space = s["space"]
    varied = [f"{k} ∈ {{{', '.join(format_value(v) for v in vals)}}}" for k, vals in space["axes"].items()]
    varied += [f"{k} ~ {describe_distribution(spec)}" for k, spec in space["distributions"].items()]
    fixed = [f"{k} = {format_value(v)}" for k, v in space["fixed"].items()]
    search = "grid search" if s["search"] == "grid" else f"Optuna search ({s['num_samples']} points, {s['sampler']})"
    asha = f", ASHA early stopping (grace {_count(s['grace_period'], 'epoch')})" if s["asha"] else ""
    text = (f"{search} over {'; '.join(varied + fixed)}{asha}. Students {s['student']} ({s['recipe']}, "
            f"{_count(s['epochs'], 'epoch')}), teacher {s['teacher']} ({_count(s['teacher_epochs'], 'epoch')}), "
            f"{_count(s['seeds'], 'seed')} per configuration.")
    students = exp.record.get("students")
    if students:
        text += (f" Every student, distilled or not, is trained alike (lr {students['lr']:g}, batch "
                 f"{students['batch_size']}, label smoothing {students['label_smoothing']:g}, augmentation seed "
                 f"{students['aug_seed']}): only α, T{', the method' if 'method' in exp.varied else ''} and the seed "
                 f"differ.")
    if "ctkd" in SearchSpace(**space).methods:
        low, high = s["ctkd_range"]
        ramp = s["ctkd_ramp_epochs"]
        scaled = ctkd_ramp_epochs(s["epochs"])
        text += (f" CTKD learns T within [{low:g}, {high:g}] from T₀, its gradient reversal ramping up over "
                 + (_count(ramp, "epoch") if ramp else f"{_count(scaled, 'epoch')} (the paper's 10 of 240, scaled)")
                 + ".")
    return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def progress_line(exp: Experiment) -> str:
    """How many trials have each outcome, against the plan ('of N planned')."""
    counts = exp.trials["outcome"].value_counts()
    parts = [f"{counts[o]} {o}" for o in [*OUTCOMES, *sorted(set(counts.index) - set(OUTCOMES))] if o in counts]
    total = sum(planned_students(exp.settings).values())
    if total > len(exp.trials):
        parts.append(f"{total - len(exp.trials)} not started yet")
    return f"Trials: {', '.join(parts)} (of {total} planned)."


def gain_text(row: dict) -> str:
    """'+1.50 points (95% CI -0.20 to +3.20, 3 paired seeds)': the paired gain in test accuracy."""
    gain = f"{100 * row['gain_mean']:+.2f} points"
    if not math.isfinite(row["gain_ci95"]):
        return f"{gain} ({_count(int(row['gain_pairs']), 'paired seed')}, no interval)"
    low, high = 100 * (row["gain_mean"] - row["gain_ci95"]), 100 * (row["gain_mean"] + row["gain_ci95"])
    return f"{gain} (95% CI {low:+.2f} to {high:+.2f}, {_count(int(row['gain_pairs']), 'paired seed')})"


def _within_noise(p: float) -> str:
    return "larger than the seed-to-seed spread" if p < SIGNIFICANCE else f"within noise (≥ {SIGNIFICANCE:g})"


def search_verdict(h: Headline, one_seed: bool) -> str:
    """The chosen configuration's gain as the search measured it: paired, and corrected for the choice."""
    if h.best is None or h.baseline is None:
        return ("Gain over the no-KD student: not known yet (needs a finished no-KD seed and a search configuration "
                "whose seeds all finished).")
    if h.gain is None:
        return "Gain over the no-KD student: not known (no seed finished both with and without distillation)."
    text = f"Gain over the no-KD student of the same seeds (test accuracy): {gain_text(h.best)}"
    if h.confirm is not None:
        text = f"Search's own estimate — optimistic (selected as the best of {h.competed}): {gain_text(h.best)}"
    if not math.isfinite(h.best["p_paired"]):
        why = "one seed per configuration" if one_seed else "fewer than 2 paired seeds, or no spread in the gains"
        return f"{text}; cannot be told from seed-to-seed noise ({why}: no paired t-test)."
    p, p_holm = h.best["p_paired"], h.best["p_holm"]
    return (f"{text}; paired t-test p = {p:.3g}, Holm-adjusted for the {h.competed} configurations compared "
            f"p = {p_holm:.3g}: {_within_noise(p_holm)}.")


def confirm_verdict(h: Headline, settings: dict) -> str | None:
    """The confirmation's gain, measured on seeds the choice never saw: the number to quote."""
    if not settings.get("confirm"):
        return None
    if h.confirm is None or h.confirm_baseline is None or not math.isfinite(h.confirm.get("gain_mean", math.nan)):
        return (f"**Confirmation on {_count(settings['confirm'], 'fresh seed')}**: not run or not finished yet "
                f"(until it is, the only gain is the search's optimistic one).")
    text = (f"**Confirmed on {_count(int(h.confirm['gain_pairs']), 'fresh seed')}** (never used in the search) — the "
            f"gain to quote: **{gain_text(h.confirm)}**")
    if not math.isfinite(h.confirm["p_paired"]):
        return f"{text}; no paired t-test (fewer than 2 pairs, or no spread)."
    return f"{text}; paired t-test p = {h.confirm['p_paired']:.3g}: {_within_noise(h.confirm['p_paired'])}."


def foreign_teacher_warning(record: dict) -> str | None:
    foreign = record.get("teacher", {}).get("foreign_data")
    if not foreign:
        return None
    recorded = foreign.get("recorded_splits") or "none recorded"
    return (f"**Warning: the teacher was not trained on this experiment's data splits** (its splits: {recorded}; "
            f"this experiment's: {foreign.get('run_splits')}; used with --allow-foreign-teacher). It may have seen "
            f"validation or test images: every validation and test number below may be inflated.")


def summary_markdown(exp: Experiment, configs: pd.DataFrame, h: Headline, figures: list[str],
                     skipped: list[str]) -> str:
    one_seed = int(exp.settings["seeds"]) == 1
    show = "method" in exp.varied  # name every configuration's method
    lines = [f"# Report: {exp.settings['name']}", ""]
    warning = foreign_teacher_warning(exp.record)
    if warning:
        lines += [warning, ""]
    lines += [describe_experiment(exp), "", progress_line(exp), ""]
    lines.append(f"- Teacher {exp.settings['teacher']} (one model): validation {pct(h.teacher['val_acc'])}%, "
                 f"test {pct(h.teacher['test_acc'])}%")
    if h.baseline is None:
        lines.append("- No-KD student: no finished seed yet")
    else:
        lines.append(f"- No-KD student ({_count(h.baseline['seeds_finished'], 'seed')}): {_accuracies(h.baseline)}")
    if h.best is None and h.competed == 0:
        lines.append("- Chosen configuration: none yet — no distilled configuration has started")
    elif h.best is None:
        lines.append(f"- Chosen configuration: none yet — none of the {h.competed} configurations has finished all "
                     f"its seeds")
    else:
        lines.append(f"- Chosen configuration — the best mean validation accuracy among the {h.complete} complete of "
                     f"{h.competed} configurations that competed: **{config_label(h.best, show)}**"
                     f"{learned_text(h.best)} ({_count(h.best['seeds_finished'], 'seed')}): "
                     f"{_accuracies(h.best, bold_test=h.confirm is None)}")
    confirmation = confirm_verdict(h, exp.settings)
    if confirmation:
        lines.append(f"- {confirmation}")
    lines.append(f"- {search_verdict(h, one_seed)}")
    if h.per_method:
        lines.append("- Best of each method (its complete configuration with the best mean validation accuracy; gains "
                     "paired on the same seeds, p Holm-adjusted over all configurations compared):")
        for method, row in h.per_method.items():
            lines.append(f"  - {config_label(row, True)}{learned_text(row)}: test "
                         f"{pct(row['test_acc_mean'], row['test_acc_std'])}%, gain {method_gain(row)}")
    for row, why in incomplete_reasons(configs):
        lines.append(f"- Not eligible, incomplete: {config_label(row, show)} — {why}")
    if one_seed:
        lines.append("- One seed per configuration: no standard deviations, confidence bands or significance tests.")
    lines += ["", markdown_table(configs, h.best, show), "",
              "Accuracies in %, mean ± std over finished seeds (final epoch); ECE in % on validation; agreement: "
              "top-1 agreement with the teacher on validation. Gain: test accuracy minus that of the no-KD student "
              "of the same seed (same initialisation, data order and augmentation), mean ± 95% CI half-width over "
              "the paired seeds; p: paired t-test, (Holm-adjusted over the search's configurations).", "",
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


def method_gain(row: dict) -> str:
    if not math.isfinite(row["gain_mean"]):
        return "not known"
    text = gain_text(row)
    if math.isfinite(row["p_paired"]):
        text += f", p = {row['p_paired']:.3g} (Holm {row['p_holm']:.3g}: {_within_noise(row['p_holm'])})"
    return text


def _accuracies(row: dict, bold_test: bool = False) -> str:
    test = f"test {pct(row['test_acc_mean'], row['test_acc_std'])}%"
    return f"validation {pct(row['val_acc_mean'], row['val_acc_std'])}%, " + (f"**{test}**" if bold_test else test)


def _gain_cell(row: dict) -> str:
    if not math.isfinite(row["gain_mean"]):
        return "—"
    return f"{100 * row['gain_mean']:+.2f}" + (f" ± {100 * row['gain_ci95']:.2f}" if math.isfinite(row["gain_ci95"]) else "")


def _p_cell(row: dict) -> str:
    if not math.isfinite(row["p_paired"]):
        return "—"
    return f"{row['p_paired']:.3g}" + (f" ({row['p_holm']:.3g})" if math.isfinite(row["p_holm"]) else "")


def markdown_table(configs: pd.DataFrame, best: dict | None = None, show_method: bool = False) -> str:
    """One row per configuration, grouped by phase and then by method (the config table's order)."""
    # The test set is evaluated at the best epoch only with --test-every: otherwise that column is left out.
    best_test = bool(configs["best_epoch_test_acc_mean"].notna().any())
    learned = bool(configs["learned_temperature_mean"].notna().any())
    header = ["configuration", "seeds finished", "val acc", "test acc", "gain vs no KD", "p (Holm)",
              "best-epoch val †", *(["test at best-val epoch †"] if best_test else []), "agreement", "ECE",
              *(["learned T"] if learned else []), "epochs", "status"]
    rows = [header, ["---"] * len(header)]
    for row in configs.to_dict("records"):
        epochs = f"{row['epochs_run_min']}" if row["epochs_run_min"] == row["epochs_run_max"] else \
            f"{row['epochs_run_min']}–{row['epochs_run_max']}"
        status = ", ".join(f"{row[o.replace(' ', '_')]} {o}" for o in OUTCOMES if row[o.replace(" ", "_")])
        if row["phase"] == "sweep" and not row["complete"]:
            status += "; incomplete, not eligible"
        label = config_label(row, show_method)
        if best is not None and row["phase"] == "sweep" and (row["method"], row["temperature"], row["alpha"]) == \
                (best["method"], best["temperature"], best["alpha"]):
            label = f"**{label}** (chosen)"
        rows.append([
            label, f"{row['seeds_finished']}/{row['trials']}",
            pct(row["val_acc_mean"], row["val_acc_std"]), pct(row["test_acc_mean"], row["test_acc_std"]),
            _gain_cell(row), _p_cell(row),
            pct(row["best_epoch_val_acc_mean"]), *([pct(row["best_epoch_test_acc_mean"])] if best_test else []),
            pct(row["agreement_mean"], digits=1), pct(row["val_ece_mean"], digits=1),
            *([_number(row["learned_temperature_mean"], row["learned_temperature_std"])] if learned else []),
            epochs, status,
        ])
    return "\n".join("| " + " | ".join(map(str, r)) + " |" for r in rows)


def _number(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.2f}" + (f" ± {std:.2f}" if math.isfinite(std) else "")


# ----------------------------------------------------------------------------- the report


def write_report(root: str | Path, out: str | Path | None = None, fmt: str = "png") -> dict:
    """Write summary.md, summary.csv and the figures into `out` (default root/report); refresh the
    experiment's per-trial summary.csv and temperature_results.json.  Returns what was written."""
    from kdtune.report import figures as report_plots
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    exp = load_experiment(root)
    out = Path(out) if out is not None else exp.root / "report"
    write_trial_summary(exp.root, exp.record, exp.tune_trials)
    configs = config_table(exp.trials, exp.planned_seeds)
    h = headline(configs, exp.record["teacher"])
    figures, skipped = report_plots.draw_all(exp, configs, h, out, fmt)
    markdown = summary_markdown(exp, configs, h, [p.name for p in figures], skipped)
    atomic_write(out / "summary.csv", lambda tmp: configs.to_csv(tmp, index=False))
    atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(markdown))
    return {"out": out, "markdown": markdown, "configs": configs, "figures": figures, "skipped": skipped}
