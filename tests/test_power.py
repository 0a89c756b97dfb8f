"""Power, exact tests, the choice on counts and the report's wording, each checked against a computation written
out in tests/by_hand.py or in the test itself (not the module's own helpers)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from by_hand import mde_by_hand, power_by_hand, sign_flip_by_hand, simulated_power
from scipy import stats as sps

from kdtune.report.stats import choose_best, config_table, mde, planned_seeds, power, seeds_needed, sign_flip_p


def test_power_matches_the_noncentral_t_written_out():
    for n, effect, sd in ((3, 1.0, 1.0), (5, 0.3, 0.5), (20, 0.01, 0.02), (2, 5.0, 1.0)):
        assert power(n, effect, sd) == pytest.approx(power_by_hand(n, effect, sd), rel=1e-9)
    assert power(3, 0.0, 1.0) == pytest.approx(0.05, rel=1e-9)  # no effect: the test's level


def test_mde_has_80_percent_power_and_exceeds_the_normal_approximation():
    found = mde(3, 1.0)
    assert found == pytest.approx(mde_by_hand(3, 1.0), rel=1e-6)
    assert power_by_hand(3, found, 1.0) == pytest.approx(0.8, abs=1e-6)
    assert simulated_power(3, found, 1.0) == pytest.approx(0.8, abs=0.005)  # 200,000 seeded experiments
    # The normal approximation, (z_0.975 + z_0.8) sd / sqrt(n), ignores 2 degrees of freedom: far too small.
    normal = (sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) / math.sqrt(3)
    assert normal < found / 2
    assert power_by_hand(3, normal, 1.0) < 0.4
    assert math.isnan(mde(1, 1.0)) and math.isnan(mde(3, 0.0))


def test_seeds_needed_is_the_smallest_n_with_80_percent_power():
    sd = 0.0049  # quick-temperature's chosen T = 10: 0.49 points
    for effect in (0.005, 0.01):
        n = seeds_needed(effect, sd)
        assert power_by_hand(n, effect, sd) >= 0.8 > power_by_hand(n - 1, effect, sd)
    assert seeds_needed(0.005, sd) == 10 and seeds_needed(0.01, sd) == 5
    assert seeds_needed(0.0001, 0.05) is None  # more than 1000
    assert seeds_needed(0.005, math.nan) is None


def test_sign_flip_p_by_enumeration():
    assert sign_flip_p([0.01, 0.01, 0.01]) == 0.25  # 3 equal gains: the exact test can never go below 2/8
    assert sign_flip_by_hand([0.01, 0.01, 0.01]) == 0.25
    rng = np.random.default_rng(3)
    for n in (1, 2, 4, 7, 10):
        d = list(rng.normal(0.01, 0.02, n))
        assert sign_flip_p(d) == pytest.approx(sign_flip_by_hand(d), abs=1e-12)
    assert sign_flip_p([0.0, 0.0]) == 1.0 and math.isnan(sign_flip_p([]))
    many = rng.normal(0.5, 1.0, 20)  # beyond 16 pairs: a seeded Monte Carlo near the exact value's neighbourhood
    assert sign_flip_p(many) == sign_flip_p(many)
    assert sign_flip_p(many) == pytest.approx(sps.ttest_1samp(many, 0).pvalue, abs=0.05)


def row(phase, temperature, seed, val, test, alpha=0.5):
    return dict(phase=phase, trial_id=f"{phase}-{temperature}-{seed}", temperature=temperature, alpha=alpha, seed=seed,
                status="TERMINATED", outcome="finished", epochs_run=5, failures=0, final_val_acc=val,
                final_test_acc=test, best_val_acc=val, best_epoch=5, test_acc_at_best_val=test, final_agreement=0.7,
                final_val_ece=0.05, final_val_nll=1.0)


def test_the_choice_is_on_counts_and_ties_are_broken_by_the_fixed_rule():
    """T = 10 and T = 15 get the same 1,372 of 3,000 validation images right, but in float32 their means
    differ in the last bit (as in quick-temperature): a tie, which the lowest T wins."""
    f32 = np.float32
    trials = [row("baseline", 1.0, s, float(f32(v / 1000)), 0.45) for s, v in enumerate((437, 459, 426))]
    trials += [row("sweep", 10.0, s, float(f32(v / 1000)), 0.46) for s, v in enumerate((449, 474, 449))]
    trials += [row("sweep", 15.0, s, float(f32(v / 1000)), 0.455) for s, v in enumerate((457, 468, 447))]
    trials += [row("sweep", 4.0, s, float(f32(v / 1000)), 0.47) for s, v in enumerate((450, 460, 450))]
    table = pd.DataFrame(trials)
    # A float mean would not see the tie (it is why choose_best took T = 15 before):
    means = table[table["phase"] == "sweep"].groupby("temperature")["final_val_acc"].mean()
    assert means[10.0] != means[15.0]
    configs = config_table(table, planned_seeds(3), {"val": 1000, "test": 10000})
    sweep = configs[configs["phase"] == "sweep"].set_index("temperature")
    assert sweep.loc[10.0, "val_correct"] == sweep.loc[15.0, "val_correct"] == 1372
    assert sweep.loc[4.0, "test_correct"] == 3 * 4700
    assert sweep["tied_best"].to_dict() == {4.0: False, 10.0: True, 15.0: True}
    best = choose_best(configs)
    assert best["temperature"] == 10.0
    # Given in the other order, the rule still picks the lowest T; without sizes the means decide.
    assert choose_best(configs.iloc[::-1])["temperature"] == 10.0
    assert choose_best(config_table(table, planned_seeds(3)))["temperature"] == means.idxmax()
