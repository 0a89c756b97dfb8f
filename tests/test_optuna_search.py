"""Optuna is told the truth: ASHA-stopped trials are PRUNED, diverged ones FAIL, finished ones COMPLETE, and
the baseline (a trial of the sweep's experiment, alpha 0) nothing."""

from __future__ import annotations

import optuna
import pytest
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from kdtune.sweep.searchers import PruningAwareOptunaSearch, make_sampler

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


def test_the_baseline_is_suggested_first_and_never_told_to_optuna(tmp_path):
    baseline = {"phase": "baseline", "alpha": 0.0, "temperature": 1.0, "method": "kd"}
    s = searcher(full_epochs=FULL, baseline=baseline)
    assert s.suggest("b") == baseline
    for epoch in range(1, FULL + 1):
        s.on_trial_result("b", {"val_acc": 0.1, "epoch": epoch, "training_iteration": epoch, "diverged": False})
    s.on_trial_complete("b", {"val_acc": 0.1, "epoch": FULL, "training_iteration": FULL, "diverged": False})
    assert states(s) == []  # alpha = 0 is no point of the searched space
    run_trial(s, "a", [0.2, 0.3, 0.4, 0.5])
    (told,) = s._ot_study.get_trials(deepcopy=False)
    assert told.state == optuna.trial.TrialState.COMPLETE and 1 <= told.params["temperature"] <= 20
    # A resumed sweep restores the searcher's state: the baseline is neither suggested again nor told.
    s.save(str(tmp_path / "searcher.pkl"))
    restored = searcher(full_epochs=FULL, baseline=baseline)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("c") != baseline and "temperature" in restored.suggest("c")
    restored.on_trial_complete("b", {"val_acc": 0.1, "epoch": FULL, "training_iteration": FULL, "diverged": False})
    assert len(restored._ot_study.get_trials(deepcopy=False)) == 2  # "a" and "c", not "b"


@pytest.mark.parametrize("name, cls", [("tpe", optuna.samplers.TPESampler), ("cmaes", optuna.samplers.CmaEsSampler),
                                       ("random", optuna.samplers.RandomSampler)])
def test_samplers_are_seeded_and_of_the_right_kind(name, cls):
    assert isinstance(make_sampler(name, 3), cls)
    draws = [make_sampler(name, 3).sample_independent(None, None, "x", optuna.distributions.FloatDistribution(0, 1))
             for _ in range(2)] if name == "random" else None
    if draws:
        assert draws[0] == draws[1]


@pytest.mark.slow
def test_optuna_asha_and_three_seeds_one_point_per_pack_stopped_points_pruned(ray_session, tmp_path):
    """Through Tune itself: each Optuna point is one trial training all 3 seeds (no Repeater), ASHA stops
    points, and the study records the stopped ones as PRUNED."""
    from kdtune.sweep.runner import _tuner_parts
    from kdtune.sweep.settings import SweepSettings
    from kdtune.sweep.spaces import SearchSpace

    settings = SweepSettings(
        name="x", search="optuna", preset="quick", teacher="tinycnn", student="tinycnn", recipe="cosine",
        teacher_recipe="cosine", teacher_epochs=1, epochs=FULL, data_dir="unused", val_size=10, train_subset=None,
        space=SearchSpace("x", "optuna", {"alpha": 0.5}, {}, {"temperature": ("loguniform", 1.0, 20.0)}),
        seeds=3, num_samples=8, sampler="random", search_seed=0, asha=True, grace_period=1, reduction_factor=2,
        max_failures=0,
    )
    param_space, search, scheduler, num_samples = _tuner_parts(settings, "sweep")

    def pack(config):  # reports as kdtune.sweep.trainable does: the mean over the seeds, and each seed's own
        # The baseline (alpha 0) scores worst of all: ASHA would stop it first if it could.
        worst = 1.0 if config["alpha"] == 0 else 0.0
        for epoch in range(1, FULL + 1):
            own = {f"s{s}/val_acc": 0.1 * epoch - 0.01 * config["temperature"] + 0.001 * s - worst
                   for s in config["seeds"]}
            tune.report({"epoch": epoch, "val_acc": sum(own.values()) / len(own), "diverged": False, **own})

    results = tune.Tuner(
        pack, param_space=param_space,
        tune_config=tune.TuneConfig(metric="val_acc", mode="max", search_alg=search, scheduler=scheduler,
                                    num_samples=num_samples, max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="optuna", verbose=0),
    ).fit()
    # The baseline's pack is the experiment's first trial (it shares the sweep's slots), and runs every epoch.
    assert num_samples == 9 and len(results) == 9 and all(r.config["seeds"] == [0, 1, 2] for r in results)
    (baseline,) = [r for r in results if r.config.get("phase") == "baseline"]
    assert baseline.config["alpha"] == 0 and baseline.metrics["training_iteration"] == FULL
    iterations = {r.config["temperature"]: r.metrics["training_iteration"] for r in results if r is not baseline}
    study = search._ot_study.get_trials(deepcopy=False)
    assert len(study) == 8  # one Optuna point per pack, not one per seed, and never the baseline
    by_t = {t.params["temperature"]: t.state for t in study}
    assert set(by_t) == set(iterations)
    for temperature, state in by_t.items():
        stopped = iterations[temperature] < FULL
        assert state == (optuna.trial.TrialState.PRUNED if stopped else optuna.trial.TrialState.COMPLETE)
    assert optuna.trial.TrialState.PRUNED in by_t.values() and optuna.trial.TrialState.COMPLETE in by_t.values()
