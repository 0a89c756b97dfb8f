"""The statistics of a comparison, shared by the report's tables, its figures and the sweep's confirmation.

A configuration is one (phase, method, T, alpha).  Its statistics are over the seeds that *finished* (ran
every epoch); trials stopped early, errored, diverged or still running are counted, never averaged in.

Distilled students and the no-KD baseline of the same seed share initialisation, data order and
augmentation, so they are *paired*: a configuration's gain is the mean of its per-seed differences
(KD minus baseline, final test accuracy), with a t-interval and the paired t-test (`ttest_rel`).
Choosing the best of m configurations by validation accuracy is a selection: the chosen one's p-value
is Holm-Bonferroni adjusted over all m, and only *complete* configurations (every planned seed
finished) can be chosen, so that a configuration whose slow seeds were stopped cannot win on its
survivors.  The choice compares integer counts of correct validation images (when the record gives the
split sizes): float means of equal counts can differ in their last bit, and a tie is a tie.  Ties are broken
by a fixed rule (`TIE_RULE`) and declared (`tied_best`).

Power is stated, not assumed: for each gain the minimum detectable effect (`mde`) of the two-sided paired
t-test at 80% power from the noncentral t distribution, and beside the t-test an exact sign-flip p-value
(`p_signflip`), which makes no normality assumption and, with n pairs, can never go below 2 / 2^n.
Accuracies are fractions throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pandas as pd

from kdtune.engine.losses import CONTROLS, METHODS
from kdtune.report.record import DEFAULT_METHOD

PHASES = ("baseline", "sweep", "confirm")  # confirm: the chosen configuration and the baseline on fresh seeds
OUTCOMES = ("finished", "stopped early", "diverged", "errored", "in progress", "running", "pending", "paused")
CONFIG_KEYS = ["phase", "method", "temperature", "alpha"]
# Statistics over finished seeds: summary.csv column -> trial_table column.
STATISTICS = {
    "val_acc": "final_val_acc", "test_acc": "final_test_acc",
    "best_epoch_val_acc": "best_val_acc", "best_epoch_test_acc": "test_acc_at_best_val",
    "agreement": "final_agreement", "val_ece": "final_val_ece",
    "learned_temperature": "final_learned_temperature",  # ctkd: the temperature it ended with
    # Fidelity to the teacher on the test set (kdtune.engine.metrics.fidelity_metrics), the no-KD student's too.
    "test_agreement": "final_test_agreement", "test_kl": "final_test_kl",
    "inherited_errors": "final_test_inherited_errors",
}
GAIN_COLUMNS = ["gain_pairs", "gain_mean", "gain_sd", "gain_ci95", "mde", "p_paired", "p_signflip", "p_holm"]
COUNT_COLUMNS = ["val_correct", "test_correct", "tied_best"]
SIGNIFICANCE = 0.05
POWER = 0.8  # the power at which the minimum detectable effect is stated
# Below this many pairs no significance is claimed: the t-test then rests on a normality it cannot check,
# and the exact sign-flip test cannot go below 2 / 2^4 = 0.125.
MIN_PAIRS = 5
MAX_SEEDS = 1000  # seeds_needed searches no further
EXACT_SIGNFLIP = 16  # enumerate all 2^n sign vectors up to this many pairs, else sample
SIGNFLIP_DRAWS = 100_000
TIE_RULE = f"the lowest temperature, then the lowest α, then the method order ({', '.join(METHODS)})"
PAIRED_ON = "final_test_acc"  # the gain is measured on the test set; the choice is made on validation


def ci95(std: float, n: int) -> float:
    """Half-width of the 95% confidence interval of a mean of n seeds (t distribution); NaN below 2 seeds."""
    from scipy import stats

    if n < 2 or not math.isfinite(std):
        return math.nan
    return float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


# ----------------------------------------------------------------------------- power and exact tests


def power(n: int, effect: float, sd: float, level: float = SIGNIFICANCE) -> float:
    """Power of the two-sided paired t-test at `level` with n pairs, when the true mean difference is `effect`
    and the differences' SD is `sd` (noncentral t); NaN below 2 pairs or without a positive SD."""
    from scipy import stats

    if n < 2 or not (math.isfinite(sd) and sd > 0):
        return math.nan
    df = n - 1
    critical = stats.t.ppf(1 - level / 2, df)
    shift = abs(effect) * math.sqrt(n) / sd
    # The far tail as sf(c, df, -shift), which equals cdf(-c, df, shift): scipy's cdf returns NaN there for
    # some large shifts where sf returns the (negligible) value.
    return float(stats.nct.sf(critical, df, shift) + stats.nct.sf(critical, df, -shift))


def mde(n: int, sd: float, target: float = POWER) -> float:
    """The minimum detectable effect: the smallest true mean difference the paired t-test of n pairs finds
    with probability `target`; NaN where `power` is."""
    from scipy.optimize import brentq

    if math.isnan(power(n, sd, sd)):
        return math.nan
    high = sd
    while power(n, high, sd) < target:  # power rises with the effect: bracket the root, then solve
        high *= 2
    return float(brentq(lambda effect: power(n, effect, sd) - target, 0.0, high, xtol=1e-12 * sd, rtol=1e-10))


def seeds_needed(effect: float, sd: float, target: float = POWER, cap: int = MAX_SEEDS) -> int | None:
    """The fewest pairs whose paired t-test finds a true gain `effect` with probability `target` at SD `sd`;
    None when more than `cap` would be needed (or the SD is unknown)."""
    if not power(cap, effect, sd) >= target:  # NaN too: the SD is unknown
        return None
    low, high = 1, cap  # power(low) < target <= power(high); power rises with n
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if power(middle, effect, sd) >= target else (middle, high)
    return high


def seeds_for_interval(sd: float, half_width: float, cap: int) -> tuple[int, bool]:
    """(n, reached): the fewest pairs, 2 to `cap`, whose 95% t-interval of the mean paired difference is at most
    ±`half_width` at SD `sd` — `cap` and False when even `cap` pairs are not enough or the SD is unknown."""
    if not (math.isfinite(sd) and sd >= 0):
        return cap, False
    for n in range(2, cap + 1):
        if ci95(sd, n) <= half_width:
            return n, True
    return cap, False


def sign_flip_p(differences, draws: int = SIGNFLIP_DRAWS, seed: int = 0) -> float:
    """Two-sided exact sign-flip (permutation) p-value of the mean of paired differences: the share of sign
    vectors whose |mean| is at least the observed one; all 2^n of them up to EXACT_SIGNFLIP pairs, else
    `draws` seeded random ones.  NaN without a pair."""
    d = np.asarray(differences, dtype=float)
    n = len(d)
    if n == 0:
        return math.nan
    if n <= EXACT_SIGNFLIP:
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
    else:
        signs = np.random.default_rng(seed).choice([-1, 1], size=(draws, n))
    flipped = np.abs(signs @ np.abs(d))
    # Sums, not means, and a relative tolerance: a flip that gives the observed sum must count despite rounding.
    observed = abs(d.sum())
    extreme = int((flipped >= observed - 1e-9 * max(np.abs(d).sum(), 1e-300)).sum())
    if n <= EXACT_SIGNFLIP:
        return extreme / len(signs)
    return (extreme + 1) / (draws + 1)  # the observed signs count as one draw: never p = 0


# ----------------------------------------------------------------------------- paired gains


@dataclass(frozen=True)
class PairedGain:
    """KD minus no-KD over the seeds both finished: mean, SD of the differences, 95% t-interval half-width,
    minimum detectable effect, paired t-test and sign-flip p-values."""

    pairs: int
    mean: float
    sd: float = math.nan  # NaN below 2 pairs
    ci95: float = math.nan  # NaN below 2 pairs
    mde: float = math.nan  # NaN below 2 pairs or when every pair differs by the same amount
    p: float = math.nan  # NaN below 2 pairs, or when every pair differs by exactly the same amount
    p_signflip: float = math.nan  # NaN without a pair


def paired_gain(kd: pd.Series, baseline: pd.Series) -> PairedGain:
    """`kd` and `baseline` are indexed by seed; only seeds present in both are paired."""
    from scipy import stats

    seeds = sorted(set(kd.index) & set(baseline.index))
    if not seeds:
        return PairedGain(0, math.nan)
    a, b = kd.loc[seeds].to_numpy(dtype=float), baseline.loc[seeds].to_numpy(dtype=float)
    diff = a - b
    n = len(diff)
    if n < 2:
        return PairedGain(n, float(diff.mean()), p_signflip=sign_flip_p(diff))
    p = math.nan
    if np.ptp(diff) > 0:  # identical differences: no spread to test against (scipy would divide by zero)
        p = float(stats.ttest_rel(a, b).pvalue)
    sd = float(diff.std(ddof=1))
    return PairedGain(n, float(diff.mean()), sd, ci95(sd, n), mde(n, sd), p, sign_flip_p(diff))


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input's order.

    Every entry is one configuration that competed.  A NaN (too few paired seeds for a test) stays NaN,
    but still counts in the number of comparisons, as if its p were 1: a configuration left untested was
    still among those the best was chosen from.
    """
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    adjusted = np.full_like(p, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    running = 0.0
    for rank, i in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))  # monotone: never below a smaller p's adjustment
        adjusted[i] = running
    return adjusted


# ----------------------------------------------------------------------------- per-configuration table


def planned_seeds(seeds: int, confirm: int = 0) -> dict:
    """Seeds each configuration of each phase should finish: what makes a configuration complete."""
    return {"baseline": seeds, "sweep": seeds, "confirm": confirm}


def config_table(trials: pd.DataFrame, planned_seeds: dict | None = None, sizes: dict | None = None) -> pd.DataFrame:
    """One row per configuration: trials, finished seeds, mean/std/CI of the statistics, paired gain over
    the no-KD baseline, epochs, outcome counts, and whether every planned seed finished (`complete`).

    `planned_seeds` ({phase: seeds per configuration}) decides completeness; without it a configuration
    is complete when all its trials finished.  `sizes` (the record's "data": {"val": images, "test": images})
    gives the correct-image counts (`val_correct`, `test_correct`, summed over finished seeds) that the
    choice compares; without it they are NaN and the choice compares mean accuracies.
    """
    keys = CONFIG_KEYS
    trials = with_method(trials)
    finished = trials[trials["outcome"] == "finished"]
    aggregations = {"seeds_finished": ("trial_id", "size")}
    for name, column in STATISTICS.items():
        # Unknown for one seed is unknown for the mean: the test set is evaluated at a seed's best epoch only
        # when that is its last (or with --test-every), and a mean over the rest would pick seeds.
        aggregations[f"{name}_mean"] = (column, lambda v: v.mean(skipna=False))
        aggregations[f"{name}_std"] = (column, lambda v: v.std(skipna=False))
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
    table["method"] = pd.Categorical(table["method"], categories=method_order(table["method"]), ordered=True)
    table = table.sort_values(keys).reset_index(drop=True)
    table["phase"] = table["phase"].astype(str)
    table["method"] = table["method"].astype(str)
    planned = [(planned_seeds or {}).get(phase, trials_) for phase, trials_ in zip(table["phase"], table["trials"])]
    table["complete"] = (table["seeds_finished"] >= planned) & (table["seeds_finished"] > 0)
    table = _add_gains(table, finished)
    table = _add_counts(table, finished, sizes)
    return table[summary_columns()]


def with_method(trials: pd.DataFrame) -> pd.DataFrame:
    """The trial table with the columns methods added: a table of an older kdtune (no `method`) is plain KD,
    which learns no temperature; statistics it did not measure (fidelity on the test set) are NaN."""
    method = trials["method"].fillna(DEFAULT_METHOD) if "method" in trials else DEFAULT_METHOD
    missing = {column: math.nan for column in STATISTICS.values() if column not in trials}  # measured since
    return trials.assign(method=method, **missing)


def method_order(methods: pd.Series) -> list[str]:
    """The methods present, in kdtune.engine.losses.METHODS order, any unknown after them."""
    known = [m for m in METHODS if m in set(methods)]
    return known + sorted(set(methods) - set(known))


def _add_gains(table: pd.DataFrame, finished: pd.DataFrame) -> pd.DataFrame:
    """Paired gain of every distilled configuration over the no-KD students of its own phase's seeds."""
    gains = []
    for row in table.to_dict("records"):
        base = baseline_row_of(table, row["phase"])
        if _is_baseline(row) or base is None:
            gains.append(PairedGain(0, math.nan))
        else:
            gains.append(paired_gain(seed_values(finished, row), seed_values(finished, base)))
    table["gain_pairs"] = [g.pairs for g in gains]
    table["gain_mean"] = [g.mean for g in gains]
    table["gain_ci95"] = [g.ci95 for g in gains]
    table["gain_sd"] = [g.sd for g in gains]
    table["mde"] = [g.mde for g in gains]
    table["p_paired"] = [g.p for g in gains]
    table["p_signflip"] = [g.p_signflip for g in gains]
    # The search's configurations compete with each other; the confirmation is one pre-chosen test.
    sweep = (table["phase"] == "sweep").to_numpy()
    p_holm = np.full(len(table), np.nan)
    p_holm[sweep] = holm(table.loc[sweep, "p_paired"])
    table["p_holm"] = p_holm
    return table


def _add_counts(table: pd.DataFrame, finished: pd.DataFrame, sizes: dict | None) -> pd.DataFrame:
    """Correct images summed over finished seeds (count = round(accuracy x split size)), and `tied_best`."""
    for split, column in (("val", "final_val_acc"), ("test", "final_test_acc")):
        size = (sizes or {}).get(split)
        counts = []
        for row in table.to_dict("records"):
            values = seed_values(finished, row, column).to_numpy()
            counts.append(float(np.round(values * size).sum()) if size and len(values) else math.nan)
        table[f"{split}_correct"] = counts
    table["tied_best"] = False
    eligible = _eligible(table)
    if len(eligible):
        score = _score(eligible)
        table.loc[eligible.index[(score == score.max()).to_numpy()], "tied_best"] = True
    return table


def _is_baseline(row: dict) -> bool:
    return row["phase"] == "baseline" or row["alpha"] == 0


def baseline_row_of(table: pd.DataFrame, phase: str) -> dict | None:
    """The no-KD row that `phase`'s distilled configurations are compared with."""
    if phase == "confirm":
        rows = table[(table["phase"] == "confirm") & (table["alpha"] == 0)]
    else:
        rows = table[table["phase"] == "baseline"]
    return rows.iloc[0].to_dict() if len(rows) else None


def seed_values(trials: pd.DataFrame, config: dict, column: str = PAIRED_ON) -> pd.Series:
    """The finished seeds' values of `column` for one configuration (a row of the config table), by seed."""
    trials = with_method(trials)
    mask = (trials["outcome"] == "finished") & (trials["phase"] == config["phase"])
    for key in ("method", "temperature", "alpha"):
        mask &= trials[key] == config[key]
    rows = trials.loc[mask]
    return pd.Series(rows[column].to_numpy(dtype=float), index=rows["seed"].astype(int).to_numpy())


def summary_columns() -> list[str]:
    stats = []
    for name in STATISTICS:
        stats += [f"{name}_mean", f"{name}_std"] + ([f"{name}_ci95"] if name in ("val_acc", "test_acc") else [])
    return [*CONFIG_KEYS, "trials", "seeds_finished", "complete", *stats, *GAIN_COLUMNS, *COUNT_COLUMNS,
            "epochs_run_min", "epochs_run_max", *[o.replace(" ", "_") for o in OUTCOMES]]


# ----------------------------------------------------------------------------- the choice


def _eligible(configs: pd.DataFrame) -> pd.DataFrame:
    """The configurations the choice is made among: the search's complete ones, the control teachers aside
    (they exist to be compared with, not chosen)."""
    return configs[(configs["phase"] == "sweep") & configs["complete"].astype(bool) & ~configs["method"].isin(CONTROLS)]


def _score(eligible: pd.DataFrame) -> pd.Series:
    """What the choice maximises: correct validation images per seed as an exact fraction (complete
    configurations may differ in seeds), or the mean accuracy when the counts are not known."""
    if "val_correct" in eligible and eligible["val_correct"].notna().all():
        return pd.Series([Fraction(int(c), int(n)) for c, n in zip(eligible["val_correct"], eligible["seeds_finished"])],
                         index=eligible.index, dtype=object)
    return eligible["val_acc_mean"]


def tied(configs: pd.DataFrame) -> pd.DataFrame:
    """The complete search configurations that share the best validation score, in TIE_RULE's order."""
    eligible = _eligible(configs)
    if not len(eligible):
        return eligible
    score = _score(eligible)
    best = eligible[(score == score.max()).to_numpy()]
    order = {m: i for i, m in enumerate(method_order(best["method"]))}
    return best.assign(_order=best["method"].map(order)).sort_values(["temperature", "alpha", "_order"]).drop(
        columns="_order")


def choose_best(configs: pd.DataFrame) -> dict | None:
    """The complete search configuration with the most correct validation images (the highest mean validation
    accuracy when counts are not known), ties broken by TIE_RULE; None when none is complete."""
    best = tied(configs)
    return best.iloc[0].to_dict() if len(best) else None


def best_per_method(configs: pd.DataFrame) -> dict[str, dict]:
    """{method: its complete search configuration with the highest mean validation accuracy}, for methods
    with one.  Each is a choice among that method's configurations; p_holm still counts all of them."""
    sweep = configs[configs["phase"] == "sweep"]
    out = {}
    for method in method_order(sweep["method"]):
        if method in CONTROLS:
            continue  # reported beside the chosen KD configuration instead: `control_shares`
        best = choose_best(sweep[sweep["method"] == method])
        if best is not None:
            out[method] = best
    return out


def incomplete_reasons(configs: pd.DataFrame) -> list[tuple[dict, str]]:
    """(row, why) for every search configuration that cannot be chosen because a seed did not finish."""
    out = []
    for row in configs[(configs["phase"] == "sweep") & ~configs["complete"]].to_dict("records"):
        why = [f"{row[o.replace(' ', '_')]} {o}" for o in OUTCOMES if o != "finished" and row[o.replace(" ", "_")]]
        out.append((row, f"{row['seeds_finished']} of {row['trials']} seeds finished" + (f" ({', '.join(why)})" if why else "")))
    return out


# ----------------------------------------------------------------------------- control teachers


@dataclass(frozen=True)
class ControlShare:
    """What share of a KD configuration's paired gain a control teacher at the same T and alpha reproduces."""

    method: str
    pairs: int  # seeds on which the baseline, the KD configuration and the control all finished
    share: float  # the control's mean gain over the KD configuration's
    low: float  # Fieller's 95% interval of the share; NaN (with `bounded` False) where it has no finite bounds
    high: float
    bounded: bool
    difference: PairedGain  # the KD configuration minus the control, paired on the same seeds


def share_interval(control: np.ndarray, kd: np.ndarray, level: float = 0.95) -> tuple[float, float, bool]:
    """Fieller's interval for mean(control) / mean(kd), both per-seed gains over the same baselines (so
    correlated): the set of ratios r whose paired t-test of control - r * kd does not reject zero.  It is
    bounded only when the KD gain itself is resolved from zero at that level; else (NaN, NaN, False)."""
    from scipy import stats

    n = len(kd)
    if n < 2:
        return math.nan, math.nan, False
    t2 = stats.t.ppf(0.5 + level / 2, n - 1) ** 2
    cov = np.cov(np.stack([control, kd]), ddof=1) / n
    c, k = float(np.mean(control)), float(np.mean(kd))
    a = k * k - t2 * cov[1, 1]
    b = -2 * (c * k - t2 * cov[0, 1])
    constant = c * c - t2 * cov[0, 0]
    if a <= 0:
        return math.nan, math.nan, False
    root = math.sqrt(max(0.0, b * b - 4 * a * constant))
    return (-b - root) / (2 * a), (-b + root) / (2 * a), True


def control_shares(configs: pd.DataFrame, trials: pd.DataFrame, kd_row: dict | None) -> list[ControlShare]:
    """For each control teacher swept at `kd_row`'s temperature and alpha, the share of `kd_row`'s paired gain
    it reproduces, on the seeds all three (and the baseline) finished."""
    if kd_row is None:
        return []
    base = baseline_row_of(configs, kd_row["phase"])
    if base is None:
        return []
    out = []
    same = configs[(configs["phase"] == kd_row["phase"]) & (configs["temperature"] == kd_row["temperature"])
                   & (configs["alpha"] == kd_row["alpha"])]
    for method in CONTROLS:
        rows = same[same["method"] == method]
        if not len(rows):
            continue
        control = rows.iloc[0].to_dict()
        values = [seed_values(trials, row) for row in (base, kd_row, control)]
        seeds = sorted(set(values[0].index) & set(values[1].index) & set(values[2].index))
        if not seeds:
            continue
        b, k, c = (v.loc[seeds].to_numpy(dtype=float) for v in values)
        kd_gain, control_gain = k - b, c - b
        share = float(control_gain.mean() / kd_gain.mean()) if kd_gain.mean() != 0 else math.nan
        low, high, bounded = share_interval(control_gain, kd_gain)
        out.append(ControlShare(method, len(seeds), share, low, high, bounded,
                                paired_gain(pd.Series(k, index=seeds), pd.Series(c, index=seeds))))
    return out
