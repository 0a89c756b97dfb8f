"""Optuna is told the truth: ASHA-stopped trials are PRUNED, diverged ones FAIL, finished ones COMPLETE."""

from __future__ import annotations

import optuna
import pytest
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from kdtune.optuna_search import PruningAwareOptunaSearch, make_sampler

SPACE = {"temperature": tune.loguniform(1, 20)}
FULL = 4


def searcher(cls=PruningAwareOptunaSearch, **extra):
    s = cls(metric="val_acc", mode="max", sampler=optuna.samplers.RandomSampler(seed=0), **extra)
    assert s.set_search_properties("val_acc", "max", SPACE)
    return s


def run_trial(s, trial_id: str, accuracies: list[float], diverged: bool = False) -> None:
    assert s.suggest(trial_id) is not None
    for epoch, acc in enumerate(accuracies, start=1):
        result = {"val_acc": acc, "epoch": epoch, "training_iteration": epoch, "diverged": diverged}
        s.on_trial_result(trial_id, result)
    s.on_trial_complete(trial_id, result)


def states(s) -> list:
    return [t.state for t in s._ot_study.get_trials(deepcopy=False)]


def test_stock_optuna_search_records_a_stopped_trial_as_complete():
    """The Ray behaviour this module exists to fix: if this starts failing, Ray fixed it upstream."""
    stock = searcher(OptunaSearch)
    run_trial(stock, "a", [0.2])
    assert states(stock) == [optuna.trial.TrialState.COMPLETE]


def test_stopped_early_is_pruned_finished_is_complete_diverged_fails():
    s = searcher(full_epochs=FULL)
    run_trial(s, "stopped", [0.2, 0.25])
    run_trial(s, "finished", [0.2, 0.3, 0.4, 0.5])
    run_trial(s, "diverged", [0.1, 0.1, 0.1, 0.1], diverged=True)
    trials = s._ot_study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.FAIL,
    ]
    assert trials[1].value == pytest.approx(0.5)
    assert trials[0].intermediate_values == {1: 0.2, 2: 0.25}  # the pruned trial keeps what it showed
    assert trials[2].value is None  # no score, NaN or otherwise, from a diverged trial


def test_errored_trial_fails():
    s = searcher(full_epochs=FULL)
    assert s.suggest("x") is not None
    s.on_trial_complete("x", None, error=True)
    assert states(s) == [optuna.trial.TrialState.FAIL]


@pytest.mark.parametrize("name, cls", [("tpe", optuna.samplers.TPESampler), ("cmaes", optuna.samplers.CmaEsSampler),
                                       ("random", optuna.samplers.RandomSampler)])
def test_samplers_are_seeded_and_of_the_right_kind(name, cls):
    assert isinstance(make_sampler(name, 3), cls)
    draws = [make_sampler(name, 3).sample_independent(None, None, "x", optuna.distributions.FloatDistribution(0, 1))
             for _ in range(2)] if name == "random" else None
    if draws:
        assert draws[0] == draws[1]
