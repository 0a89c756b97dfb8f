"""kdtune.report.stats: paired gains, Holm's correction, completeness and the choice, each checked against a
computation written out here (numpy and scipy's t distribution, not the module's own helpers)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from kdtune.report.stats import choose_best, config_table, holm, paired_gain, planned_seeds, summary_columns

SEEDS = [0, 1, 2]
CONFIRM_SEEDS = [3, 4, 5]


def trial(phase, temperature, alpha, seed, test_acc, val_acc, outcome="finished", epochs=5):
    finished = outcome == "finished"
    return dict(phase=phase, trial_id=f"{phase}-{temperature}-{alpha}-{seed}", temperature=temperature, alpha=alpha,
                seed=seed, status="TERMINATED", outcome=outcome, epochs_run=epochs if finished else 2, failures=0,
                final_val_acc=val_acc, final_test_acc=test_acc, best_val_acc=val_acc, best_epoch=epochs,
                test_acc_at_best_val=test_acc, final_agreement=0.7, final_val_ece=0.05, final_val_nll=1.0)


@pytest.fixture
def trials() -> pd.DataFrame:
    """A baseline, four search configurations and a confirmation, with seed effects shared by a seed's runs
    (as with the same initialisation) so that pairing matters."""
    rng = np.random.default_rng(7)
    seed_effect = {s: rng.normal(0, 0.02) for s in SEEDS + CONFIRM_SEEDS}
    rows = [trial("baseline", 1.0, 0.0, s, 0.50 + seed_effect[s], 0.51 + seed_effect[s]) for s in SEEDS]
    true_gain = {2.0: 0.01, 4.0: 0.03, 8.0: 0.02, 16.0: 0.00}
    for t, gain in true_gain.items():
        for s in SEEDS:
            noise = rng.normal(0, 0.005)
            outcome = "stopped early" if (t, s) == (16.0, 2) else "finished"
            # T = 16 looks best on validation over the seeds it kept: survivorship must not pick it.
            val = 0.6 if t == 16.0 else 0.51 + gain + seed_effect[s] + noise
            rows.append(trial("sweep", t, 0.5, s, 0.50 + gain + seed_effect[s] + noise, val, outcome))
    for s in CONFIRM_SEEDS:
        rows.append(trial("confirm", 1.0, 0.0, s, 0.50 + seed_effect[s], 0.51 + seed_effect[s]))
        rows.append(trial("confirm", 4.0, 0.5, s, 0.53 + seed_effect[s] + rng.normal(0, 0.005), 0.55))
    return pd.DataFrame(rows)


def by_hand(kd: dict, base: dict) -> tuple[int, float, float, float]:
    seeds = sorted(set(kd) & set(base))
    d = np.array([kd[s] - base[s] for s in seeds])
    n = len(d)
    if n < 2:
        return n, float(d.mean()), math.nan, math.nan
    se = d.std(ddof=1) / math.sqrt(n)
    return n, float(d.mean()), float(sps.t.ppf(0.975, n - 1) * se), float(2 * sps.t.sf(abs(d.mean() / se), n - 1))


def values(trials: pd.DataFrame, phase: str, temperature: float, alpha: float) -> dict:
    rows = trials[(trials["phase"] == phase) & (trials["temperature"] == temperature) & (trials["alpha"] == alpha)
                  & (trials["outcome"] == "finished")]
    return dict(zip(rows["seed"], rows["final_test_acc"]))


def test_paired_gains_holm_and_completeness_match_a_computation_by_hand(trials):
    configs = config_table(trials, planned_seeds(len(SEEDS), len(CONFIRM_SEEDS)))
    assert list(configs.columns) == summary_columns()
    base = values(trials, "baseline", 1.0, 0.0)
    sweep = configs[configs["phase"] == "sweep"]
    expected_p = []
    for row in sweep.to_dict("records"):
        n, mean, half, p = by_hand(values(trials, "sweep", row["temperature"], row["alpha"]), base)
        assert row["gain_pairs"] == n
        assert row["gain_mean"] == pytest.approx(mean, rel=1e-12)
        assert row["gain_ci95"] == pytest.approx(half, rel=1e-9)
        assert row["p_paired"] == pytest.approx(p, rel=1e-9)
        expected_p.append(p)
    # Holm by hand over the 4 configurations that competed: sort, multiply by (m - rank + 1), cumulative max.
    order = np.argsort(expected_p)
    adjusted = np.maximum.accumulate([min(1.0, (4 - k) * expected_p[i]) for k, i in enumerate(order)])
    want = np.empty(4)
    want[order] = adjusted
    np.testing.assert_allclose(sweep["p_holm"].to_numpy(dtype=float), want, rtol=1e-9)
    # The confirmation pairs with its own fresh-seed baseline, and is no multiple comparison.
    confirm = configs[(configs["phase"] == "confirm") & (configs["alpha"] > 0)].iloc[0]
    n, mean, half, p = by_hand(values(trials, "confirm", 4.0, 0.5), values(trials, "confirm", 1.0, 0.0))
    assert (confirm["gain_pairs"], confirm["gain_mean"]) == (3, pytest.approx(mean, rel=1e-12))
    assert confirm["p_paired"] == pytest.approx(p, rel=1e-9) and math.isnan(confirm["p_holm"])
    assert configs["complete"].tolist() == [True, True, True, True, False, True, True]


def test_pairing_is_by_seed_not_by_position(trials):
    """Dropping a seed from one side must drop it from the pairs, not shift the remaining ones."""
    dropped = trials[~((trials["phase"] == "baseline") & (trials["seed"] == 0))]
    row = config_table(dropped).set_index(["phase", "temperature"]).loc[("sweep", 4.0)]
    kd = values(trials, "sweep", 4.0, 0.5)
    base = values(trials, "baseline", 1.0, 0.0)
    assert row["gain_pairs"] == 2
    assert row["gain_mean"] == pytest.approx(np.mean([kd[s] - base[s] for s in (1, 2)]), rel=1e-12)


def test_only_complete_configurations_can_be_chosen(trials):
    configs = config_table(trials, planned_seeds(len(SEEDS), len(CONFIRM_SEEDS)))
    sweep = configs[configs["phase"] == "sweep"].set_index("temperature")
    assert sweep["val_acc_mean"].idxmax() == 16.0  # its surviving seeds look best ...
    best = choose_best(configs)
    assert best["temperature"] != 16.0  # ... but one was stopped: it cannot be chosen
    complete = sweep[sweep["complete"]]
    assert best["temperature"] == complete["val_acc_mean"].idxmax()
    # A configuration with fewer trials than planned (not started yet) is incomplete too.
    search = trials[trials["phase"] != "confirm"]
    fewer = config_table(search[search["seed"] != 2], planned_seeds(len(SEEDS)))
    assert not fewer["complete"].any() and choose_best(fewer) is None


def test_holm_known_values():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> raised to 0.06 (monotone).
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])
    # An untested configuration stays untested but still counts as one of the comparisons.
    got = holm([0.01, math.nan, 0.02])
    assert math.isnan(got[1]) and got[0] == pytest.approx(0.03) and got[2] == pytest.approx(0.04)


def test_paired_gain_edge_cases():
    one = paired_gain(pd.Series([0.6], index=[0]), pd.Series([0.5, 0.4], index=[0, 1]))
    assert one.pairs == 1 and one.mean == pytest.approx(0.1) and math.isnan(one.ci95) and math.isnan(one.p)
    same = paired_gain(pd.Series([0.6, 0.7], index=[0, 1]), pd.Series([0.5, 0.6], index=[0, 1]))
    assert same.mean == pytest.approx(0.1) and same.ci95 == pytest.approx(0.0, abs=1e-12) and math.isnan(same.p)
    none = paired_gain(pd.Series([0.6], index=[3]), pd.Series([0.5], index=[0]))
    assert none.pairs == 0 and math.isnan(none.mean)
