"""Faults a long sweep must survive: a crashing trial, a diverging trial, a worker node that dies.

(A killed driver is in test_sweep.py; damaged files in test_teacher.py and test_data.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from kdtune.sweep.trainable import FAIL_ENV

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SPACE = "grid:\n  temperature: [2, 8]\n  alpha: 0.5\n"


@pytest.fixture()
def workdir(tmp_path):
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "tiny.yaml").write_text(SPACE)
    return tmp_path


def args(workdir: Path, data: Path, name: str, *extra: str) -> list[str]:
    return ["--grid", "tiny", "--seeds", "1", "--preset", "quick", "--teacher", "tinycnn", "--student", "tinycnn",
            "--teacher-epochs", "1", "--train-subset", "300", "--val-size", "100", "--data-dir", str(data),
            "--name", name, "--results-dir", str(workdir / "results"), "--teacher-store", str(workdir / "teachers"),
            *extra]


def run(workdir: Path, argv: list[str], **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "KDTUNE_SEARCH_SPACES": str(workdir / "spaces"), "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "tune.py"), *argv], env=full_env,
                          capture_output=True, text=True, timeout=400, cwd=workdir)


def test_a_crashing_trial_is_retried_from_its_checkpoint(workdir, mini_data_dir):
    marker = workdir / "crashed-once"
    done = run(workdir, args(workdir, mini_data_dir, "crash", "--epochs", "3", "--max-failures", "2"),
               **{FAIL_ENV: f"2:{marker}"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert marker.exists()  # the failure really was injected
    table = pd.read_csv(workdir / "results" / "crash" / "summary.csv")
    assert (table["outcome"] == "finished").all() and (table["epochs_run"] == 3).all()
    assert table["failures"].sum() == 1  # one trial crashed once; the summary shows its retry
    crashed = table.loc[table["failures"] == 1].iloc[0]
    # The baseline's trials live in the sweep experiment's folder, beside the sweep's own.
    folder = workdir / "results" / "crash" / ("confirm" if crashed["phase"] == "confirm" else "sweep")
    pack = crashed["trial_id"].rsplit("_s", 1)[0]  # the Tune trial (a pack of seeds) this student belongs to
    (result,) = [p for p in folder.glob(f"*{pack}*/result.json")]
    rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
    # Resumed after epoch 1's checkpoint, not restarted from scratch: epoch 2 is the first report since the
    # restore.  (Whether the first attempt's epoch-1 line survives in result.json depends on Tune's timing.)
    after = {row["epoch"]: row["iterations_since_restore"] for row in rows if row["epoch"] >= 2}
    assert after == {2: 1, 3: 2}, rows


def test_a_diverging_trial_stops_itself_and_the_sweep_goes_on(workdir, mini_data_dir):
    done = run(workdir, args(workdir, mini_data_dir, "diverge", "--epochs", "3", "--lr", "1e30"))
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(workdir / "results" / "diverge" / "summary.csv")
    assert len(table) == 3
    assert (table["outcome"] == "diverged").all()
    assert (table["epochs_run"] < 3).all()  # stopped itself rather than training on NaN


def test_a_dying_worker_node_reschedules_its_trials(own_ray, workdir, mini_data_dir, tmp_path_factory):
    ray = own_ray  # connect() joins the cluster at --address only if no Ray is initialized here
    from ray.cluster_utils import Cluster

    sys.path.insert(0, str(ROOT / "scripts"))
    import tune as tune_script  # noqa: PLC0415

    storage = tmp_path_factory.mktemp("shared-storage")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    doomed = cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    os.environ["KDTUNE_SEARCH_SPACES"] = str(workdir / "spaces")

    def kill_doomed_once_a_trial_runs_there() -> None:
        # Tune syncs result.json to the storage only now and then, so the node's busy CPU says a trial runs there,
        # once the sweep phase has started (before it, the teacher's task may be the one using it).
        from ray._private.state import available_resources_per_node

        record = workdir / "results" / "cluster" / "experiment.json"
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                sweeping = "sweep" in json.loads(record.read_text()).get("phases_started", [])
            except (OSError, ValueError):  # not written yet, or being replaced
                sweeping = False
            # A resource in full use is left out of a node's entry.
            free = available_resources_per_node().get(doomed.node_id) if sweeping and ray.is_initialized() else None
            if free is not None and free.get("CPU", 0.0) < 1.0:
                time.sleep(2.0)  # past the trial's start-up, into its epochs: it fails after reporting some
                cluster.remove_node(doomed)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_doomed_once_a_trial_runs_there, daemon=True)
    killer.start()
    try:
        code = tune_script.main(args(workdir, mini_data_dir, "cluster", "--epochs", "20", "--max-failures", "3",
                                     "--address", cluster.address, "--storage-path", f"file://{storage}"))
        killer.join(timeout=5)
        assert code == 0
        assert doomed.node_id not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}  # the node really died
        table = pd.read_csv(workdir / "results" / "cluster" / "summary.csv")
        assert (table["outcome"] == "finished").all() and (table["epochs_run"] == 20).all()
        assert table["failures"].sum() >= 1  # a trial on the dead node was rescheduled
    finally:
        os.environ.pop("KDTUNE_SEARCH_SPACES", None)
        ray.shutdown()
        cluster.shutdown()


def test_a_trial_checkpointed_every_k_epochs_is_retried_from_its_last_and_reproduces_the_uninterrupted_run(
        workdir, mini_data_dir):
    """--checkpoint-every 2 and a crash in epoch 3: the retry restarts after epoch 2 (epoch 3 is trained again)
    and ends with exactly the numbers of a run that never crashed."""
    marker = workdir / "crashed-once"
    common = ["--epochs", "4", "--max-failures", "2", "--checkpoint-every", "2", "--precision", "fp32"]
    done = run(workdir, args(workdir, mini_data_dir, "every2", *common), **{FAIL_ENV: f"3:{marker}"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert marker.exists()
    whole = run(workdir, args(workdir, mini_data_dir, "whole", *common))
    assert whole.returncode == 0, whole.stderr[-3000:]
    crashed, clean = (pd.read_csv(workdir / "results" / name / "summary.csv") for name in ("every2", "whole"))
    assert crashed["failures"].sum() == 1 and clean["failures"].sum() == 0
    key = ["phase", "temperature", "alpha", "seed"]
    merged = crashed.merge(clean, on=key, suffixes=("_crashed", "_clean"))
    assert len(merged) == 3
    for column in ("final_val_acc", "final_test_acc", "final_val_nll", "final_test_agreement"):
        assert (merged[f"{column}_crashed"] == merged[f"{column}_clean"]).all(), column
    row = crashed.loc[crashed["failures"] == 1].iloc[0]
    pack = row["trial_id"].rsplit("_s", 1)[0]
    (result,) = (workdir / "results" / "every2" / "sweep").glob(f"*{pack}*/result.json")
    rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
    after = {r["epoch"]: r["iterations_since_restore"] for r in rows if r["epoch"] >= 3 and r["iterations_since_restore"]}
    assert after == {3: 1, 4: 2}, rows  # restored after epoch 2's checkpoint: epoch 3 trained again
