"""The Python API: README's example run as written (a real sweep and its report), and bad arguments."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from kdtune import api
from kdtune.engine.errors import UserError


@pytest.mark.slow
def test_readme_example_runs_a_sweep_and_reports_it(readme_experiment):
    record = json.loads((readme_experiment / "experiment.json").read_text())
    settings = record["settings"]
    assert (settings["teacher"], settings["student"], settings["epochs"], settings["seeds"]) == (
        "resnet20", "tinycnn", 1, 1)
    assert settings["space"]["axes"] == {"temperature": [2.0, 8.0]} and settings["space"]["fixed"] == {"alpha": 0.5}
    assert record["data"]["train"] == 200 and record["data"]["val"] == 100
    trials = pd.read_csv(readme_experiment / "summary.csv")  # the sweep's per-trial summary
    assert sorted(zip(trials["phase"], trials["temperature"], trials["outcome"])) == [
        ("baseline", 1.0, "finished"), ("sweep", 2.0, "finished"), ("sweep", 8.0, "finished")]
    # The report's numbers are the ones each trial reported to Tune.
    configs = pd.read_csv(readme_experiment / "report" / "summary.csv").set_index(["phase", "temperature"])
    # The baseline is a trial of the sweep's experiment (sharing its slots), its config naming its phase.
    assert not (readme_experiment / "baseline").exists()
    results = sorted((readme_experiment / "sweep").glob("*/result.json"))
    phases = [json.loads((result.parent / "params.json").read_text()).get("phase", "sweep") for result in results]
    assert sorted(phases) == ["baseline", "sweep", "sweep"]
    for phase, result in zip(phases, results):
        last = json.loads(result.read_text().splitlines()[-1])
        row = configs.loc[(phase, last["temperature"])]
        assert row["val_acc_mean"] == pytest.approx(last["val_acc"], rel=1e-6)
        assert row["test_acc_mean"] == pytest.approx(last["test_acc"], rel=1e-6)
    markdown = (readme_experiment / "report" / "summary.md").read_text()
    assert "T = 2, α = 0.5" in markdown and "T = 8, α = 0.5" in markdown
    assert (readme_experiment / "report" / "temperature_analysis.png").stat().st_size > 0


@pytest.mark.slow
def test_plan_is_the_dry_run(mini_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("KDTUNE_TEACHER_STORE", str(tmp_path / "teachers"))
    text = api.plan({"temperature": [2, 4], "alpha": 0.5}, teacher="tinycnn", student="tinycnn",
                    data_dir=mini_data_dir, preset="quick", seeds=2, train_subset=100, val_size=20)
    assert "baseline (no distillation, alpha 0): 2 trials" in text
    assert "alpha=0.5, temperature=2 x 2 seeds" in text and "alpha=0.5, temperature=4 x 2 seeds" in text
    assert "on 100 training images" in text and "teacher tinycnn (strong, 8 epochs): to be trained" in text
    assert not (tmp_path / "teachers").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"search": "bayes"}, "unknown search 'bayes'; choose one of grid, optuna"),
        ({"epoch": 3}, r"unknown sweep option\(s\) epoch; known: .*epochs"),
        ({"student": "nosuchnet"}, "unknown model 'nosuchnet'"),
        ({"cpus_per_trial": 0}, "invalid cpus-per-trial 0"),
        ({"preset": "huge"}, "unknown preset 'huge'"),
    ],
)
def test_bad_arguments_are_user_errors(kwargs, message, tmp_path):
    with pytest.raises(UserError, match=message):
        api.sweep({"temperature": [2], "alpha": 0.5}, data_dir=tmp_path, results_dir=tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())


def test_an_existing_experiment_is_not_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "experiment.json").write_text("{}")
    with pytest.raises(UserError, match="already exists"):
        api.sweep("temperature", name="mine", results_dir=tmp_path, data_dir=tmp_path)
