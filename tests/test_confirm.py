"""The confirmation: which configurations it re-measures (the chosen one and those tied with it, up to three),
and on how many fresh seeds (--confirm K, or auto: as many as the search's paired spread says reach the
target interval), each checked against a computation written out here."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from test_stats import trial

import kdtune.report.results
from kdtune.report.stats import seeds_for_interval
from kdtune.sweep.runner import _tuner_parts, choose_for_confirmation
from kdtune.sweep.searchers import GridPoints
from kdtune.sweep.settings import build_settings


def settings_for(confirm, **extra):
    return build_settings("x", "grid", {"temperature": [2, 4, 8, 16], "alpha": 0.5}, "paper", data_dir="unused",
                          seeds=3, confirm=confirm, **extra)


def half_width(sd: float, n: int) -> float:
    return sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n)


@pytest.mark.parametrize("sd, target, cap", [(0.01, 0.005, 20), (0.004, 0.005, 20), (0.03, 0.005, 20),
                                             (0.0, 0.005, 20), (math.nan, 0.005, 7)])
def test_seeds_for_an_interval_are_the_fewest_that_reach_it(sd, target, cap):
    n, reached = seeds_for_interval(sd, target, cap)
    fitting = [k for k in range(2, cap + 1) if math.isfinite(sd) and half_width(sd, k) <= target]
    assert (n, reached) == ((fitting[0], True) if fitting else (cap, False))


def search(gains: dict, sd_noise: float, val: dict | None = None) -> pd.DataFrame:
    """A baseline and search configurations on seeds 0-2; `val` gives each temperature's validation accuracy."""
    rng = np.random.default_rng(3)
    rows = [trial("baseline", 1.0, 0.0, s, 0.50, 0.50) for s in range(3)]
    for t, gain in gains.items():
        for s in range(3):
            rows.append(trial("sweep", t, 0.5, s, 0.50 + gain + rng.normal(0, sd_noise), (val or {}).get(t, 0.5 + gain)))
    return pd.DataFrame(rows)


def choose(monkeypatch, settings, table: pd.DataFrame) -> dict | None:
    monkeypatch.setattr(kdtune.report.results, "trial_table", lambda record: table)
    return choose_for_confirmation(settings, {"data": {"val": 1000, "test": 10000}})


def test_auto_sizes_the_confirmation_from_the_chosen_configurations_paired_spread(monkeypatch):
    table = search({2.0: 0.01, 4.0: 0.03}, sd_noise=0.01)
    chosen = choose(monkeypatch, settings_for("auto", target_ci=0.5, max_confirm_seeds=40), table)
    assert (chosen["temperature"], chosen["alpha"], chosen["method"]) == (4.0, 0.5, "kd")
    kd = table[(table["phase"] == "sweep") & (table["temperature"] == 4.0)].sort_values("seed")["final_test_acc"]
    sd = float(np.std(kd.to_numpy() - 0.50, ddof=1))  # the paired differences' SD, the baseline being 0.50
    fitting = [k for k in range(2, 41) if half_width(sd, k) <= 0.005]
    assert chosen["sizing"]["paired_sd"] == pytest.approx(sd, rel=1e-9)
    assert chosen["seeds"] == list(range(3, 3 + fitting[0])) and chosen["sizing"]["reached"]
    capped = choose(monkeypatch, settings_for("auto", target_ci=0.01, max_confirm_seeds=4), table)
    assert capped["seeds"] == [3, 4, 5, 6] and not capped["sizing"]["reached"]
    fixed = choose(monkeypatch, settings_for(2), table)
    assert fixed["seeds"] == [3, 4] and "sizing" not in fixed


def test_configurations_tied_for_best_are_all_re_measured_up_to_three(monkeypatch):
    same = {2.0: 0.52, 4.0: 0.52, 8.0: 0.52, 16.0: 0.52}  # four tied on validation counts
    chosen = choose(monkeypatch, settings_for(2), search({t: 0.01 for t in same}, 0.005, val=same))
    assert chosen["temperature"] == 2.0  # the tie rule: the lowest temperature first
    assert [c["temperature"] for c in chosen["configurations"]] == [2.0, 4.0, 8.0]
    param_space, searcher, scheduler, trials = _tuner_parts(settings_for(2), "confirm", chosen)
    assert isinstance(searcher, GridPoints) and scheduler is None and trials == 4
    assert param_space == {"seeds": [3, 4]}
    assert searcher.points[0] == {"alpha": 0.0, "temperature": 1.0, "method": "kd"}  # the baseline, no phase
    assert [(p["temperature"], p["alpha"]) for p in searcher.points[1:]] == [(2.0, 0.5), (4.0, 0.5), (8.0, 0.5)]


def test_the_paper_preset_sizes_its_confirmation_automatically_and_says_so():
    from kdtune.sweep.settings import describe_plan, plan

    settings = settings_for(None)
    assert settings.confirm == "auto" and settings.max_confirm_seeds == 20 and settings.target_ci == 0.5
    assert plan(settings)["confirm_trials"] == 2 * 20  # the plan's upper bound: the cap, one configuration
    assert "as many as the search's paired spread says give a 95% interval of ±0.5 points, at most 20" in (
        describe_plan(settings, 45000, True))


def test_the_command_takes_a_number_or_auto(capsys):
    from kdtune.cli.tune import parse_args

    assert parse_args(["--grid", "temperature", "--confirm", "auto"]).confirm == "auto"
    assert parse_args(["--grid", "temperature", "--confirm", "4"]).confirm == 4
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--grid", "temperature", "--confirm", "some"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert "--confirm: invalid value 'some': must be an integer >= 0 or auto" in err
