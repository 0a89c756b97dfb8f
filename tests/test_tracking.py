"""MLflow and W&B tracking: a real (tiny) sweep logs every trial to a local MLflow store (SQLite: MLflow 3
refuses a plain folder unless MLFLOW_ALLOW_FILE_STORE=true) and to W&B in offline mode; a missing extra or an
unusable store is a one-line error."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import RAY_LOCAL

from kdtune import api
from kdtune.cli import main
from kdtune.engine.errors import UserError
from kdtune.sweep.settings import Resources

HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
HAS_WANDB = importlib.util.find_spec("wandb") is not None


@pytest.mark.parametrize("field, value, flag, extra", [("mlflow_uri", "file:///tmp/mlruns", "--mlflow", "mlflow"),
                                                       ("wandb_project", "kd", "--wandb", "wandb")])
def test_a_missing_extra_is_named(field, value, flag, extra, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, extra, None)  # as if it were not installed
    with pytest.raises(UserError, match=rf"{flag} needs the {extra} package.*pip install 'kdtune\[{extra}\]'"):
        Resources(**{field: value})
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--grid", "temperature", flag, value, "--dry-run"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1 and f"kdtune[{extra}]" in err, err


@pytest.mark.skipif(not HAS_MLFLOW, reason="mlflow is not installed (pip install 'kdtune[mlflow]')")
def test_an_unusable_mlflow_store_is_one_line(tmp_path, monkeypatch):
    from kdtune.sweep.tracking import tracking_callbacks

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for uri, message in ((f"sqlite:///{blocker}/sub/mlflow.db", "Not a directory"), ("nosuch://x", "unsupported URI")):
        with pytest.raises(UserError, match=rf"^--mlflow {uri}: .*{message}") as error:
            tracking_callbacks(uri, None, "exp", "sweep")
        assert "\n" not in str(error.value)


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (pip install 'kdtune[wandb]')")
def test_a_wandb_run_is_of_its_trials_own_phase(monkeypatch):
    """The baseline trains as a trial of the sweep's experiment: its W&B job type is its own phase."""
    from kdtune.sweep.tracker_callbacks import PhaseTaggedWandb

    class Trial:
        def __init__(self, trial_id, config):
            self.trial_id, self.config, self.experiment_dir_name = trial_id, config, "sweep"

        def __str__(self):
            return self.trial_id

    callback = PhaseTaggedWandb(project="kd", group="exp", job_type="sweep")
    started = []
    monkeypatch.setattr(callback, "_start_logging_actor", lambda trial, exclude, **init: started.append(init))
    callback.log_trial_start(Trial("b", {"phase": "baseline", "alpha": 0.0, "seeds": [0]}))
    callback.log_trial_start(Trial("s", {"alpha": 0.5, "temperature": 4.0, "seeds": [0]}))
    assert [(init["id"], init["job_type"], init["group"]) for init in started] == [
        ("b", "baseline", "exp"), ("s", "sweep", "exp")]
    assert callback.kwargs["job_type"] == "sweep"  # the experiment's own, for the next trial


@pytest.fixture(scope="module")
def tracked(mini_data_dir, tmp_path_factory):
    """A sweep (baseline + one distilled trial) logged to whichever trackers are installed.

    It runs on a Ray of its own, started after WANDB_MODE and WANDB_DIR are set: W&B's logging actors read them
    from the environment their worker processes were started with."""
    if not (HAS_MLFLOW or HAS_WANDB):
        pytest.skip("neither mlflow nor wandb is installed (pip install 'kdtune[mlflow,wandb]')")
    import ray

    base = tmp_path_factory.mktemp("tracking")
    mp = pytest.MonkeyPatch()
    running = ray.is_initialized()
    if running:
        ray.shutdown()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_DIR", str(base))
    ray.init(**RAY_LOCAL)
    try:
        root = api.sweep({"temperature": [4], "alpha": 0.5}, name="tracked", results_dir=base / "results",
                         teacher="tinycnn", student="tinycnn", data_dir=mini_data_dir, preset="quick", epochs=2,
                         teacher_epochs=1, seeds=1, train_subset=100, val_size=20, teacher_store=base / "teachers",
                         mlflow_uri=f"sqlite:///{base / 'mlflow.db'}" if HAS_MLFLOW else None,
                         wandb_project="kdtune-test" if HAS_WANDB else None)
        if HAS_WANDB:
            wait_for_wandb_logs(base / "wandb", runs=2)
    finally:
        ray.shutdown()
        mp.undo()
        if running:
            ray.init(**RAY_LOCAL)
    return base, pd.read_csv(root / "summary.csv")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MLFLOW, reason="mlflow is not installed (pip install 'kdtune[mlflow]')")
def test_mlflow_logs_every_trial(tracked):
    from mlflow.tracking import MlflowClient

    base, trials = tracked
    client = MlflowClient(tracking_uri=f"sqlite:///{base / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.data.tags["kdtune_phase"] for run in runs) == ["baseline", "sweep"]
    for run in runs:
        phase = run.data.tags["kdtune_phase"]
        trial = trials[trials["phase"] == phase].iloc[0]
        assert run.data.metrics["val_acc"] == pytest.approx(trial["final_val_acc"], rel=1e-6)
        assert [m.value for m in client.get_metric_history(run.info.run_id, "epoch")] == [1, 2]
        assert float(run.data.params["alpha"]) == trial["alpha"]


def wait_for_wandb_logs(folder: Path, runs: int, timeout_s: float = 60.0) -> None:
    """Wait until each offline run's log holds records, before Ray's shutdown ends W&B's writer processes:
    a run that wandb has finished may still be writing its log (seen once in CI: a 7-byte file, its
    header only)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        logs = list(folder.glob("offline-run-*/run-*.wandb"))
        if len(logs) >= runs and all(log.stat().st_size > 1024 for log in logs):
            return
        time.sleep(0.5)


def logged_values(run_log: Path, key: str) -> list[float]:
    """The values of `key` in a W&B offline run's transaction log (run-*.wandb), in order.

    wandb >= 0.18 has no Python reader for the log; it holds protobuf HistoryItem records in which a key
    (field 2) is followed by its JSON value (field 16), both length-prefixed.
    """
    pattern = re.compile(rb"\x12" + bytes([len(key)]) + re.escape(key.encode()) + rb"\x82\x01(.)", re.S)
    data = run_log.read_bytes()
    return [float(data[m.end(): m.end() + m.group(1)[0]]) for m in pattern.finditer(data)]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (pip install 'kdtune[wandb]')")
def test_wandb_offline_logs_every_trial(tracked):
    base, trials = tracked
    runs = sorted((base / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 2, runs
    logged = sorted((logged_values(run, "epoch"), logged_values(run, "val_acc")) for run in runs)
    # Each epoch is logged as a history row and again as the run's summary.
    assert [sorted(set(epochs)) for epochs, _ in logged] == [[1, 2], [1, 2]]
    assert sorted(values[-1] for _, values in logged) == pytest.approx(sorted(trials["final_val_acc"]), rel=1e-6)
