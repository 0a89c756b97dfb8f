"""Cluster checks before any work: fixed clusters refuse what no node has; autoscaling ones accept it with a note.

A simulated cluster: `ray.nodes()` lists one live CPU-only head node, and the cluster config an
autoscaler publishes in the GCS says (or does not) that GPU workers start on demand.  tune.py's main()
runs in-process, with data and models checked by stand-ins (they are checked before Ray starts), up to putting
the data into Ray's object store, where it is stopped: the cluster checks before it are what is tested.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import ray
from ray._private.state import state
from ray.core.generated import autoscaler_pb2

import kdtune.sweep.runner
from kdtune.cli.args import run_cli
from kdtune.engine.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import tune as tune_script  # noqa: E402

HEAD = {"Alive": True, "NodeID": "head", "Resources": {"CPU": 4.0}}


def cluster_config(max_gpu_workers: int) -> autoscaler_pb2.ClusterConfig:
    return autoscaler_pb2.ClusterConfig(node_group_configs=[
        autoscaler_pb2.NodeGroupConfig(name="head", resources={"CPU": 4}, min_count=1, max_count=1),
        autoscaler_pb2.NodeGroupConfig(name="gpu-workers", resources={"CPU": 8, "GPU": 1}, min_count=0,
                                       max_count=max_gpu_workers),
    ])


class DataSharingReached(UserError):
    """Raised where the sweep would put its data into Ray's object store: every check before it passed."""


@pytest.fixture()
def cluster(monkeypatch, tmp_path):
    """Set `cluster.config` to what the autoscaler publishes (None: no autoscaler)."""

    class Simulated:
        config = None

    monkeypatch.setattr(kdtune.sweep.runner, "connect", lambda address, runtime_env=None: None)
    monkeypatch.setattr(ray, "nodes", lambda: [HEAD])
    monkeypatch.setattr(state, "get_cluster_config", lambda: Simulated.config)

    def stop(*args, **kwargs):
        raise DataSharingReached("every check passed")

    splits = types.SimpleNamespace(train_labels=range(100))  # what the plan printed at the start reads of them
    monkeypatch.setattr(kdtune.sweep.runner, "load_splits", lambda settings: splits)
    monkeypatch.setattr(kdtune.sweep.runner, "check_models", lambda settings, splits: None)
    monkeypatch.setattr(kdtune.sweep.runner, "to_shared", stop)
    return Simulated


def sweep(tmp_path, capsys, *extra: str) -> tuple[int, str, str]:
    argv = ["--grid", "temperature", "--preset", "quick", "--train-subset", "100", "--name", "cluster", "--results-dir",
            str(tmp_path / "results"), "--teacher-store", str(tmp_path / "teachers"), "--address", "auto",
            "--data-dir", str(tmp_path / "data"), *extra]
    with pytest.raises(SystemExit) as exit_:
        run_cli(tune_script.main, argv)
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())
    out, err = capsys.readouterr()
    return exit_.value.code, out, err.strip()


SHARED = ("--storage-path", "file:///mnt/shared/kdtune")


def test_a_fixed_cluster_refuses_gpus_no_node_has(cluster, tmp_path, capsys):
    code, _, err = sweep(tmp_path, capsys, "--gpus-per-trial", "1", *SHARED)
    assert code == 1 and err == "error: gpus-per-trial 1 is more than any node has (largest: 0 GPUs)"


def test_an_autoscaling_cluster_accepts_gpus_its_workers_will_have(cluster, tmp_path, capsys):
    cluster.config = cluster_config(max_gpu_workers=4)
    code, out, err = sweep(tmp_path, capsys, "--gpus-per-trial", "1", *SHARED)
    assert err == "error: every check passed", err
    assert "note: gpus-per-trial 1 is more than any live node has" in out and "Ray's autoscaler" in out


def test_an_autoscaling_cluster_still_refuses_what_no_node_type_has(cluster, tmp_path, capsys):
    cluster.config = cluster_config(max_gpu_workers=4)
    code, _, err = sweep(tmp_path, capsys, "--gpus-per-trial", "2", *SHARED)
    assert code == 1 and "gpus-per-trial 2 is more than any node has" in err


def test_a_node_type_that_cannot_start_does_not_count(cluster, tmp_path, capsys):
    cluster.config = cluster_config(max_gpu_workers=0)
    code, _, err = sweep(tmp_path, capsys, "--gpus-per-trial", "1", *SHARED)
    assert code == 1 and "more than any node has" in err


def test_autoscale_flag_accepts_what_no_live_node_has(cluster, tmp_path, capsys):
    code, out, err = sweep(tmp_path, capsys, "--gpus-per-trial", "1", "--autoscale", *SHARED)
    assert err == "error: every check passed", err
    assert "note: gpus-per-trial 1" in out and "--autoscale" in out


def test_an_autoscaling_cluster_needs_storage_every_node_reaches(cluster, tmp_path, capsys):
    cluster.config = cluster_config(max_gpu_workers=4)
    code, _, err = sweep(tmp_path, capsys, "--gpus-per-trial", "1")
    assert code == 1 and "is local to this machine" in err and "starts more on demand" in err


# ----------------------------------------------------------------------------- resources by default


@pytest.fixture()
def checked(monkeypatch) -> dict:
    """{'resources': what check_cluster was given}, after the defaults were resolved against the cluster."""
    seen = {}
    real = kdtune.sweep.runner.check_cluster
    monkeypatch.setattr(kdtune.sweep.runner, "check_cluster",
                        lambda resources, storage: seen.update(resources=resources) or real(resources, storage))
    return seen


GPU_NODE = {"Alive": True, "NodeID": "gpu", "Resources": {"CPU": 16.0, "GPU": 8.0}}


def test_trials_share_a_gpu_as_measured_by_default_where_the_cluster_has_gpus(cluster, checked, tmp_path, capsys,
                                                                             monkeypatch):
    from kdtune.engine.fill import FillChoice

    asked = {}

    def measured(settings, resources, splits, cpus_per_gpu):
        asked.update(cpus_per_gpu=cpus_per_gpu, gpus_per_trial=resources.gpus_per_trial)
        return FillChoice(4, None, [], [], "as measured")

    monkeypatch.setattr(ray, "nodes", lambda: [HEAD, GPU_NODE])
    monkeypatch.setattr(kdtune.sweep.runner, "measure_fill_on_gpu", measured)
    code, out, err = sweep(tmp_path, capsys, *SHARED)
    assert err == "error: every check passed", err
    assert asked == {"cpus_per_gpu": 2.0, "gpus_per_trial": None}  # 16 CPUs for 8 GPUs
    assert checked["resources"].gpus_per_trial == 0.25
    assert "GPU fill (measured): 4 trials per GPU (--gpus-per-trial 0.25): as measured" in out
    assert kdtune.sweep.runner.teacher_task_resources(checked["resources"]) == {"num_cpus": 1.0, "num_gpus": 1}


def test_a_failed_gpu_measurement_leaves_a_whole_gpu_per_trial(cluster, checked, tmp_path, capsys, monkeypatch):
    def fails(*args):
        raise RuntimeError("a GPU-fill measurement worker failed: CUDA error: out of memory")

    monkeypatch.setattr(ray, "nodes", lambda: [HEAD, GPU_NODE])
    monkeypatch.setattr(kdtune.sweep.runner, "measure_fill_on_gpu", fails)
    code, out, err = sweep(tmp_path, capsys, *SHARED)
    assert err == "error: every check passed", err
    assert checked["resources"].gpus_per_trial == 1.0 and "trials use a whole GPU each" in out
    assert "note: the GPU-fill measurement failed (a GPU-fill measurement worker failed: CUDA error" in out


def test_nothing_is_measured_when_the_user_placed_the_trials(cluster, checked, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ray, "nodes", lambda: [HEAD, GPU_NODE])
    monkeypatch.setattr(kdtune.sweep.runner, "measure_fill_on_gpu", lambda *args: pytest.fail("measured"))
    code, out, err = sweep(tmp_path, capsys, "--gpus-per-trial", "0.5", "--pack", "0", *SHARED)
    assert err == "error: every check passed", err
    assert checked["resources"].gpus_per_trial == 0.5 and "GPU fill" not in out


def test_no_gpus_by_default_on_a_cpu_cluster_and_the_teacher_gets_a_whole_node(cluster, checked, tmp_path, capsys):
    code, out, err = sweep(tmp_path, capsys, *SHARED)
    assert err == "error: every check passed", err
    assert checked["resources"].gpus_per_trial == 0.0 and "trials use a whole GPU" not in out
    # Not one trial's share: every CPU of the largest node (HEAD has 4).
    assert kdtune.sweep.runner.teacher_task_resources(checked["resources"]) == {"num_cpus": 4.0}
