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
no-KD students of the same seeds (gain_pairs, gain_mean, gain_sd: the SD of the paired differences,
gain_ci95, mde: the smallest true gain the paired t-test detects with 80% power at that SD and number of
pairs, p_paired: the paired t-test, p_signflip: the exact sign-flip test) and the t-test's Holm-adjusted
p-value over the search's configurations (p_holm); val_correct / test_correct, the correct images summed
over finished seeds, and tied_best (a complete search configuration with as many correct validation images
as the best); epochs_run_min/max; one count column per outcome.

The wording follows the intervals: a gain whose interval contains zero is inconclusive, a re-measurement
on fresh seeds is "confirmed" only when its interval excludes zero, and below MIN_PAIRS pairs no
significance is claimed at all.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from kdtune.engine.atomic import atomic_write
from kdtune.engine.config import ctkd_ramp_epochs
from kdtune.engine.errors import UserError
from kdtune.report.experiment import Experiment, Headline, finite, load_experiment
from kdtune.report.record import SearchSpace, describe_distribution, format_value, planned_students
from kdtune.report.results import write_trial_summary
from kdtune.report.stats import (
    MAX_SEEDS,
    MIN_PAIRS,
    OUTCOMES,
    POWER,
    SIGNIFICANCE,
    TIE_RULE,
    baseline_row_of,
    best_per_method,
    choose_best,
    config_table,
    control_shares,
    incomplete_reasons,
    seeds_needed,
    summary_columns,
    tied,
)

FORMATS = ("png", "pdf", "svg")
METHOD_NAME = {"kd": "KD", "ls": "LS", "ctkd": "CTKD", "dkd": "DKD", "kd-shuffled": "control kd-shuffled",
               "kd-uniform": "control kd-uniform"}
CONTROL_MEANING = {"kd-shuffled": "another same-class image's teacher logits (class-level knowledge only)",
                   "kd-uniform": "a label-only teacher as confident as the real one (label smoothing)"}
FIDELITY_NOTE = ("Fidelity on the test set, mean ± std over finished seeds: agreement, the share of test images on "
                 "which student and teacher predict the same class; KL, mean KL(teacher || student) at T = 1 in nats; "
                 "inherited errors, of the test images the teacher gets wrong, the share on which the student "
                 "predicts the same wrong class. The no-KD student never saw the teacher: its values are what "
                 "agreeing by learning the same task gives.")
__all__ = ["OUTCOMES", "config_table", "summary_columns", "write_report", "load_experiment", "headline"]
PLANNED_EFFECTS = (0.005, 0.01)  # gains (0.5 and 1 point) whose seeds needed the report states


# ----------------------------------------------------------------------------- the headline


def headline(configs: pd.DataFrame, teacher: dict) -> Headline:
    """The chosen configuration, its ties, the baseline and the confirmation, from the config table."""
    baseline = configs[(configs["phase"] == "baseline") & (configs["seeds_finished"] > 0)]
    sweep = configs[configs["phase"] == "sweep"]
    confirm = configs[(configs["phase"] == "confirm") & (configs["alpha"] > 0) & (configs["seeds_finished"] > 0)]
    confirm_base = baseline_row_of(configs, "confirm")
    best = choose_best(configs)
    # The confirmation re-measures the chosen configuration and those tied with it: the chosen one's row first.
    remeasured = sorted(confirm.to_dict("records"), key=lambda row: best is None or _key(row) != _key(best))
    return Headline(
        {k: teacher[k] for k in ("val_acc", "test_acc")},
        baseline.iloc[0].to_dict() if len(baseline) else None,
        best,
        competed=len(sweep), complete=int(sweep["complete"].sum()),
        confirm=remeasured[0] if remeasured else None,
        confirm_others=remeasured[1:],
        confirm_baseline=confirm_base if confirm_base and confirm_base["seeds_finished"] > 0 else None,
        per_method=best_per_method(configs) if sweep["method"].nunique() > 1 else None,
        ties=tied(configs).to_dict("records"),
        confirm_search=_search_row(configs, remeasured[0]) if remeasured else None,
    )


def _search_row(configs: pd.DataFrame, row: dict) -> dict | None:
    """The search's row of the configuration `row` (of another phase) re-measured."""
    sweep = configs[configs["phase"] == "sweep"]
    same = sweep[(sweep["method"] == row["method"]) & (sweep["temperature"] == row["temperature"])
                 & (sweep["alpha"] == row["alpha"])]
    return same.iloc[0].to_dict() if len(same) else None


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


def pack_line(trials: pd.DataFrame) -> str | None:
    """How the trials trained their students (loop or stack) and, where auto measured it, the two speeds."""
    if "pack_mode" not in trials or trials["pack_mode"].isna().all():
        return None
    modes = trials.dropna(subset=["pack_mode"]).drop_duplicates("trial_id")
    parts = [f"{count} student{'s' * (count != 1)} as a {mode}" for mode, count in modes["pack_mode"].value_counts().items()]
    text = "Packed trials trained " + " and ".join(parts)
    measured = modes.dropna(subset=["pack_loop_images_per_s", "pack_stack_images_per_s"])
    if len(measured):
        ratio = measured["pack_stack_images_per_s"] / measured["pack_loop_images_per_s"]
        low, high = f"{ratio.min():.2f}x", f"{ratio.max():.2f}x"
        span = low if low == high else f"{low} to {high}"
        text += (f" (pack mode auto, measured on each trial's device: the stack at {span} the loop's images/s, "
                 f"the loop at {measured['pack_loop_images_per_s'].median():,.0f} images/s)")
    return text + "."


def fill_line(record: dict) -> str | None:
    """Where trials shared a GPU (or stacked students) as the sweep measured it (kdtune.engine.fill)."""
    fill = record.get("gpu_fill")
    if not fill:
        return None
    share = (f"packs of {fill['pack']} students, one per GPU" if fill.get("pack")
             else f"{fill['trials_per_gpu']} trial{'s' * (fill['trials_per_gpu'] != 1)} per GPU")
    return f"GPU fill, measured when the sweep started: {share} — {fill['why']}."


def progress_line(exp: Experiment) -> str:
    """How many trials have each outcome, against the plan ('of N planned')."""
    counts = exp.trials["outcome"].value_counts()
    parts = [f"{counts[o]} {o}" for o in [*OUTCOMES, *sorted(set(counts.index) - set(OUTCOMES))] if o in counts]
    total = sum(planned_students(exp.settings, exp.record.get("confirm")).values())
    if total > len(exp.trials):
        parts.append(f"{total - len(exp.trials)} not started yet")
    return f"Trials: {', '.join(parts)} (of {total} planned)."


def gain_text(row: dict) -> str:
    """'+1.50 points (95% CI -0.20 to +3.20, 3 paired seeds; detectable at 80% power: 2.10 points)'."""
    gain = f"{100 * row['gain_mean']:+.2f} points"
    pairs = _count(int(row["gain_pairs"]), "paired seed")
    if not math.isfinite(row["gain_ci95"]):
        return f"{gain} ({pairs}, no interval)"
    low, high = interval(row)
    detectable = f"; detectable at {POWER:.0%} power: {100 * row['mde']:.2f} points" if math.isfinite(row["mde"]) else ""
    return f"{gain} (95% CI {100 * low:+.2f} to {100 * high:+.2f}, {pairs}{detectable})"


def interval(row: dict) -> tuple[float, float]:
    return row["gain_mean"] - row["gain_ci95"], row["gain_mean"] + row["gain_ci95"]


def reading(row: dict, estimate: float | None = None) -> str:
    """What the 95% interval says, against zero and (for a re-measurement) the search's own `estimate`."""
    low, high = interval(row)
    if low > 0:
        return "its 95% interval lies above zero"
    if high < 0:
        return "its 95% interval lies below zero"
    if estimate is None:
        return "inconclusive: its 95% interval contains zero"
    if low <= estimate <= high:
        return f"inconclusive: its 95% interval contains both zero and the search's estimate ({100 * estimate:+.2f})"
    return f"its 95% interval contains zero but not the search's estimate ({100 * estimate:+.2f})"


def tests_text(row: dict, holm_over: int | None = None) -> str:
    """The p-values of a gain, and a statement of significance only when there are MIN_PAIRS pairs or more."""
    pairs = int(row["gain_pairs"])
    parts = []
    if math.isfinite(row["p_paired"]):
        parts.append(f"paired t-test p = {row['p_paired']:.3g}")
    if math.isfinite(row["p_signflip"]):
        parts.append(f"exact sign-flip p = {row['p_signflip']:.3g}")
    p = row["p_paired"]
    if holm_over is not None and math.isfinite(row["p_holm"]):
        parts.append(f"Holm-adjusted for the {holm_over} configurations compared p = {row['p_holm']:.3g}")
        p = row["p_holm"]
    text = ", ".join(parts)
    if pairs < MIN_PAIRS:
        return f"{text}; no significance claimed with {pairs} < {MIN_PAIRS} pairs"
    if not math.isfinite(p):
        return f"{text}; no paired t-test (no spread in the gains)"
    verdict = "larger than the seed-to-seed spread" if p < SIGNIFICANCE else f"within noise (p ≥ {SIGNIFICANCE:g})"
    return f"{text}: {verdict}"


def search_verdict(h: Headline, one_seed: bool) -> str:
    """The chosen configuration's gain as the search measured it: paired, selected, corrected for the choice."""
    if h.best is None or h.baseline is None:
        return ("Gain over the no-KD student: not known yet (needs a finished no-KD seed and a search configuration "
                "whose seeds all finished).")
    if h.gain is None:
        return "Gain over the no-KD student: not known (no seed finished both with and without distillation)."
    text = (f"Gain over the no-KD student of the same seeds (test accuracy), {optimistic(h)}: "
            f"{gain_text(h.best)}")
    if not math.isfinite(h.best["gain_ci95"]):
        why = "one seed per configuration" if one_seed else "fewer than 2 paired seeds"
        return f"{text}; cannot be told from seed-to-seed noise ({why}: no interval, no paired t-test)."
    return f"{text}; {reading(h.best)}; {tests_text(h.best, h.competed)}."


def optimistic(h: Headline) -> str:
    return f"optimistic (selected among {h.competed})"


def confirm_verdict(h: Headline, settings: dict) -> str | None:
    """The gain re-measured on seeds the choice never saw: the number to quote."""
    if not settings.get("confirm"):
        return None
    if h.confirm is None or h.confirm_baseline is None or not math.isfinite(h.confirm.get("gain_mean", math.nan)):
        seeds = "fresh seeds" if settings["confirm"] == "auto" else _count(settings["confirm"], "fresh seed")
        return (f"**Re-measurement on {seeds}**: not run or not finished yet "
                f"(until it is, the only gain is the search's optimistic one).")
    pairs = int(h.confirm["gain_pairs"])
    text = (f"**Re-measured on {_count(pairs, 'fresh seed')}** (never used in the search) — the gain to quote: "
            f"{gain_text(h.confirm)}")
    if not math.isfinite(h.confirm["gain_ci95"]):
        return f"{text}; no interval (fewer than 2 pairs)."
    low, _ = interval(h.confirm)
    confirmed = "confirmed: " if low > 0 and pairs >= MIN_PAIRS else ""
    estimate = finite(h.confirm_search, "gain_mean")
    others = "".join(f" Tied with it and re-measured too: {config_label({**row, 'phase': 'sweep'}, True)}, "
                     f"{gain_text(row)}." for row in h.confirm_others if math.isfinite(row.get("gain_mean", math.nan)))
    return f"{text}; {confirmed}{reading(h.confirm, estimate)}; {tests_text(h.confirm)}.{others}"


def confirm_choice_note(h: Headline, show: bool) -> str | None:
    """When the re-measured configuration is not the one chosen now (an earlier rule chose among ties)."""
    if h.confirm is None or h.best is None or _key(h.confirm) == _key(h.best):
        return None
    among = " (one of the tied configurations)" if any(_key(t) == _key(h.confirm) for t in h.ties) else ""
    return (f"The re-measurement is of {config_label({**h.confirm, 'phase': 'sweep'}, show)}{among}, the search's "
            f"choice when it ran (recorded in experiment.json); by today's rule the chosen configuration is "
            f"{config_label(h.best, show)}, which has not been re-measured.")


def _key(row: dict) -> tuple:
    return row["method"], row["temperature"], row["alpha"]


def ties_line(h: Headline, show: bool) -> str | None:
    if len(h.ties) < 2:
        return None
    score = (f"{int(h.best['val_correct'])} correct validation images each" if math.isfinite(h.best["val_correct"])
             else "the same mean validation accuracy")
    labels = "; ".join(config_label(t, show) for t in h.ties)
    return (f"Tied for best ({score}): {labels}. The one quoted is chosen by a fixed rule, {TIE_RULE}: "
            f"{config_label(h.best, show)}.")


def power_lines(h: Headline, configs: pd.DataFrame) -> list[str]:
    """The detectable gain, the seeds a smaller one would need, and (below MIN_PAIRS) why nothing is significant."""
    lines = []
    best = h.best
    if best is not None and math.isfinite(best.get("mde", math.nan)):
        needs = []
        for effect in PLANNED_EFFECTS:
            n = seeds_needed(effect, best["gain_sd"])
            seeds = f"{n} seeds" if n is not None else f"more than {MAX_SEEDS} seeds"
            needs.append(f"{seeds} for a true gain of {100 * effect:g} point{'s' * (effect != 0.01)}")
        lines.append(f"Power: at the chosen configuration's SD of the paired differences ({100 * best['gain_sd']:.2f} "
                     f"points, itself estimated from {_count(int(best['gain_pairs']), 'pair')}), the two-sided paired "
                     f"t-test at {SIGNIFICANCE:g} detects a gain of {100 * best['mde']:.2f} points with {POWER:.0%} "
                     f"probability; {POWER:.0%} power would need {' and '.join(needs)}.")
    gains = configs[configs["gain_mean"].notna()]
    few = gains[gains["gain_pairs"] < MIN_PAIRS]
    if len(few):
        mdes = 100 * few["mde"].dropna()
        span = (f" ({mdes.min():.2f} to {mdes.max():.2f} points across configurations)" if len(mdes) > 1 else
                f" ({mdes.iloc[0]:.2f} points)" if len(mdes) else "")
        lines.append(f"With fewer than {MIN_PAIRS} pairs ({_pairs_span(few)}), no statement of significance is made "
                     f"for any configuration: this comparison cannot resolve gains below its minimum detectable "
                     f"gain{span}.")
    return lines


def _pairs_span(rows: pd.DataFrame) -> str:
    low, high = int(rows["gain_pairs"].min()), int(rows["gain_pairs"].max())
    return f"{low} here" if low == high else f"{low} to {high} here"


def conditioning(exp: Experiment) -> str:
    """What every interval holds fixed: the one teacher and the one augmentation stream."""
    teacher = exp.record.get("teacher", {})
    where = teacher.get("path")
    named = f"checkpoint `{where}`" if where else "checkpoint not recorded"
    digest = teacher.get("digest")
    if digest:
        named += f", digest {digest}"
    seed = (teacher.get("config") or {}).get("seed")
    trained = f", trained with seed {seed}" if seed is not None else ""
    return (f"All intervals are conditional on one teacher and one augmentation stream: the teacher "
            f"{exp.settings['teacher']} ({named}{trained}) and the students' augmentation seed "
            f"(aug_seed) {exp.settings.get('aug_seed', 0)}. They measure the spread over student seeds only; "
            f"another teacher or augmentation stream may move every number.")


def rebuilt_note(exp: Experiment) -> str | None:
    if exp.rebuilt_from is None:
        return None
    return (f"Rebuilt from the experiment's {exp.rebuilt_from.name} (one row per trial): Tune's trial folders under "
            f"{exp.record['storage']} are missing, so the per-epoch results and their figures are not available.")


def foreign_teacher_warning(record: dict) -> str | None:
    foreign = record.get("teacher", {}).get("foreign_data")
    if not foreign:
        return None
    recorded = foreign.get("recorded_splits") or "none recorded"
    return (f"**Warning: the teacher was not trained on this experiment's data splits** (its splits: {recorded}; "
            f"this experiment's: {foreign.get('run_splits')}; used with --allow-foreign-teacher). It may have seen "
            f"validation or test images: every validation and test number below may be inflated.")


def summary_markdown(exp: Experiment, configs: pd.DataFrame, h: Headline, figures: list[str],
                     skipped: list[str], card: list[str] = ()) -> str:
    one_seed = int(exp.settings["seeds"]) == 1
    show = "method" in exp.varied  # name every configuration's method
    lines = [f"# Report: {exp.settings['name']}", ""]
    warning = foreign_teacher_warning(exp.record)
    if warning:
        lines += [warning, ""]
    lines += [conditioning(exp), ""]
    rebuilt = rebuilt_note(exp)
    if rebuilt:
        lines += [rebuilt, ""]
    lines += [describe_experiment(exp), "", progress_line(exp), ""]
    for line in (fill_line(exp.record), pack_line(exp.trials)):
        if line:
            lines += [line, ""]
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
        lines.append(f"- Chosen configuration — {_chosen_by(h, exp.record.get('data'))} among the {h.complete} "
                     f"complete of {h.competed} configurations that competed: **{config_label(h.best, show)}**"
                     f"{learned_text(h.best)} ({_count(h.best['seeds_finished'], 'seed')}), {optimistic(h)}: "
                     f"{_accuracies(h.best)}")
    for line in (ties_line(h, show), confirm_verdict(h, exp.settings), confirm_choice_note(h, show),
                 search_verdict(h, one_seed), *power_lines(h, configs)):
        if line:
            lines.append(f"- {line}")
    if h.per_method:
        lines.append("- Best of each method (its complete configuration with the most correct validation images, each "
                     f"{optimistic(h)}; gains paired on the same seeds, p Holm-adjusted over all configurations "
                     "compared):")
        for method, row in h.per_method.items():
            lines.append(f"  - {config_label(row, True)}{learned_text(row)}: test "
                         f"{pct(row['test_acc_mean'], row['test_acc_std'])}%, gain {method_gain(row, h.competed)}")
    lines += control_lines(configs, exp.trials, h)
    for row, why in incomplete_reasons(configs):
        lines.append(f"- Not eligible, incomplete: {config_label(row, show)} — {why}")
    if one_seed:
        lines.append("- One seed per configuration: no standard deviations, confidence bands or significance tests.")
    lines += ["", markdown_table(configs, h.best, show), "",
              "Accuracies in %, mean ± std over finished seeds (final epoch); ECE in % on validation; agreement: "
              "top-1 agreement with the teacher on validation. Gain: test accuracy minus that of the no-KD student "
              "of the same seed (same initialisation, data order and augmentation), mean ± 95% CI half-width over "
              f"the paired seeds, in points; MDE: the smallest true gain the two-sided paired t-test at "
              f"{SIGNIFICANCE:g} detects with {POWER:.0%} power, at the observed SD of the paired differences and "
              f"their number (noncentral t); p t-test: paired t-test (Holm-adjusted over the search's "
              f"configurations); p sign-flip: exact two-sided sign-flip test over the paired differences (with n "
              f"pairs never below 2/2ⁿ). The choice compares correct validation images summed over seeds; "
              f"ties are marked and broken by {TIE_RULE}.", "",
              "† Best epoch: the epoch with the highest validation accuracy, picked after training — optimistic, "
              "not a result to report as the model's accuracy (picking the epoch on the test set would inflate it "
              "further).",
              ""]
    fidelity = fidelity_table(configs, show)
    if fidelity:
        lines += [fidelity, "", FIDELITY_NOTE, ""]
    if (configs["in_progress"] > 0).any():
        lines += ["In progress: started but not finished — running now, or interrupted mid-run.", ""]
    if figures:
        lines += ["Figures: " + ", ".join(figures), ""]
    if card:
        lines += ["Teacher card: " + ", ".join(card), ""]
    if skipped:
        lines += ["Not drawn:", *[f"- {reason}" for reason in skipped]]
    return "\n".join(lines).rstrip() + "\n"


def control_lines(configs: pd.DataFrame, trials: pd.DataFrame, h: Headline) -> list[str]:
    """What share of the best KD configuration's gain each control teacher at its T and α reproduces, worded
    by the interval (Fieller's, on the seeds all of them and the baseline finished)."""
    sweep = configs[(configs["phase"] == "sweep") & (configs["method"] == "kd")]
    kd_row = choose_best(sweep)
    shares = control_shares(configs, trials, kd_row)
    if not shares:
        return []
    if not kd_row["gain_mean"] > 0:
        lines = [f"- Controls at the best KD configuration's {config_label(kd_row)}: KD itself gained "
                 f"{gain_text(kd_row)}, no positive gain, so there is no share for a control to reproduce; KD "
                 f"against each control on the same seeds:"]
        return lines + [f"  - {share.method} ({CONTROL_MEANING[share.method]}): {difference_text(share.difference)}"
                        for share in shares]
    lines = [f"- Controls at the best KD configuration's {config_label(kd_row)} (its gain "
             f"{gain_text(kd_row)}); each control's gain as a share of KD's on the same seeds, 95% Fieller interval:"]
    for share in shares:
        lines.append(f"  - {share.method} ({CONTROL_MEANING[share.method]}): {share_text(share)}")
    return lines


def share_text(share) -> str:
    pairs = _count(share.pairs, "paired seed")
    if not share.bounded:
        return (f"reproduces {_percent(share.share)} of KD's gain on {pairs}, an interval without bounds: KD's own "
                f"gain is not resolved from zero on these seeds, so no share can be stated")
    low, high = share.low, share.high
    if low > 1:
        verdict = "more than all of KD's gain"
    elif high < 0:
        verdict = "less than nothing: it does worse than no KD"
    elif low > 0 and high < 1:
        verdict = "some of KD's gain, but not all of it"
    elif low > 0:
        verdict = "consistent with all of KD's gain; that it reproduces none is excluded"
    elif high < 1:
        verdict = "less than all of KD's gain; that it reproduces none is not excluded"
    else:
        verdict = "inconclusive: the interval contains both none and all of KD's gain"
    d = share.difference
    difference = f"; {difference_text(d)}" if d.pairs >= 2 and math.isfinite(d.ci95) else ""
    return (f"{_percent(share.share)} (95% CI {_percent(low)} to {_percent(high)}, {pairs}): {verdict}"
            f"{difference}")


def difference_text(d) -> str:
    """'KD minus the control +0.40 points (95% CI +0.10 to +0.70: KD ahead)', worded by the interval."""
    if d.pairs < 2 or not math.isfinite(d.ci95):
        return f"KD minus the control {100 * d.mean:+.2f} points ({_count(d.pairs, 'paired seed')}, no interval)"
    low, high = d.mean - d.ci95, d.mean + d.ci95
    side = "KD ahead" if low > 0 else "the control ahead" if high < 0 else "neither resolved ahead"
    return f"KD minus the control {100 * d.mean:+.2f} points (95% CI {100 * low:+.2f} to {100 * high:+.2f}: {side})"


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.0f}%" if math.isfinite(fraction) else "—"


def fidelity_table(configs: pd.DataFrame, show_method: bool) -> str:
    """Agreement, KL and inherited errors on the test set, the no-KD student's first; '' when none was measured."""
    rows = configs[configs["test_agreement_mean"].notna()]
    if not len(rows):
        return ""
    rows = pd.concat([rows[rows["phase"] == "baseline"], rows[rows["phase"] != "baseline"]])
    lines = ["| configuration | agreement (test) | KL at T = 1 (test) | inherited errors (test) |", "|---|---|---|---|"]
    for row in rows.to_dict("records"):
        lines.append(f"| {config_label(row, show_method)} | {pct(row['test_agreement_mean'], row['test_agreement_std'], 1)}"
                     f" | {_number(row['test_kl_mean'], row['test_kl_std'])} | "
                     f"{pct(row['inherited_errors_mean'], row['inherited_errors_std'], 1)} |")
    return "\n".join(lines)


def method_gain(row: dict, competed: int) -> str:
    if not math.isfinite(row["gain_mean"]):
        return "not known"
    if not math.isfinite(row["gain_ci95"]):
        return gain_text(row)
    return f"{gain_text(row)}; {reading(row)}; {tests_text(row, competed)}"


def _chosen_by(h: Headline, sizes: dict | None) -> str:
    if h.best is not None and math.isfinite(h.best["val_correct"]) and sizes:
        images = int(h.best["seeds_finished"]) * int(sizes["val"])
        return f"the most correct validation images ({int(h.best['val_correct'])} of {images:,})"
    return "the best mean validation accuracy"


def _accuracies(row: dict) -> str:
    return (f"validation {pct(row['val_acc_mean'], row['val_acc_std'])}%, "
            f"test {pct(row['test_acc_mean'], row['test_acc_std'])}%")


def _gain_cell(row: dict) -> str:
    if not math.isfinite(row["gain_mean"]):
        return "—"
    return f"{100 * row['gain_mean']:+.2f}" + (f" ± {100 * row['gain_ci95']:.2f}" if math.isfinite(row["gain_ci95"]) else "")


def _p_cell(row: dict) -> str:
    if not math.isfinite(row["p_paired"]):
        return "—"
    return f"{row['p_paired']:.3g}" + (f" ({row['p_holm']:.3g})" if math.isfinite(row["p_holm"]) else "")


def _value(value: float, digits: str = ".3g", scale: float = 1.0) -> str:
    return f"{scale * value:{digits}}" if math.isfinite(value) else "—"


def markdown_table(configs: pd.DataFrame, best: dict | None = None, show_method: bool = False) -> str:
    """One row per configuration, grouped by phase and then by method (the config table's order)."""
    # The test set is evaluated at the best epoch only with --test-every: otherwise that column is left out.
    best_test = bool(configs["best_epoch_test_acc_mean"].notna().any())
    learned = bool(configs["learned_temperature_mean"].notna().any())
    header = ["configuration", "seeds finished", "val acc", "val correct", "test acc", "gain vs no KD", "MDE",
              "p t-test (Holm)", "p sign-flip",
              "best-epoch val †", *(["test at best-val epoch †"] if best_test else []), "agreement", "ECE",
              *(["learned T"] if learned else []), "epochs", "status"]
    rows = [header, ["---"] * len(header)]
    ties = int(configs["tied_best"].sum())
    for row in configs.to_dict("records"):
        epochs = f"{row['epochs_run_min']}" if row["epochs_run_min"] == row["epochs_run_max"] else \
            f"{row['epochs_run_min']}–{row['epochs_run_max']}"
        status = ", ".join(f"{row[o.replace(' ', '_')]} {o}" for o in OUTCOMES if row[o.replace(" ", "_")])
        if row["phase"] == "sweep" and not row["complete"]:
            status += "; incomplete, not eligible"
        label = config_label(row, show_method)
        if best is not None and row["phase"] == "sweep" and _key(row) == _key(best):
            label = f"**{label}** (chosen, {'tied' if ties > 1 else 'optimistic'})"
        elif row["tied_best"]:
            label = f"{label} (tied)"
        rows.append([
            label, f"{row['seeds_finished']}/{row['trials']}",
            pct(row["val_acc_mean"], row["val_acc_std"]), _value(row["val_correct"], ".0f"),
            pct(row["test_acc_mean"], row["test_acc_std"]),
            _gain_cell(row), _value(row["mde"], ".2f", 100), _p_cell(row), _value(row["p_signflip"]),
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
    experiment's per-trial summary.csv and temperature_results.json (unless the trials were rebuilt from that
    summary.csv).  Returns what was written."""
    from kdtune.report import figures as report_plots
    from kdtune.report.teacher_card import write_card
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    exp = load_experiment(root)
    out = Path(out) if out is not None else exp.root / "report"
    if exp.tune_trials is not None:  # rebuilt from the per-trial summary.csv: nothing newer to write back
        write_trial_summary(exp.root, exp.record, exp.tune_trials)
    configs = config_table(exp.trials, exp.planned_seeds, exp.record.get("data"))
    h = headline(configs, exp.record["teacher"])
    figures, skipped = report_plots.draw_all(exp, configs, h, out, fmt)
    card = write_card(exp, out, fmt)
    markdown = summary_markdown(exp, configs, h, [p.name for p in figures], skipped, [p.name for p in card])
    counts = {"val_correct": "Int64", "test_correct": "Int64"}  # integers, empty where unknown
    atomic_write(out / "summary.csv", lambda tmp: configs.astype(counts).to_csv(tmp, index=False))
    atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(markdown))
    return {"out": out, "markdown": markdown, "configs": configs, "figures": figures, "skipped": skipped,
            "teacher_card": card}
