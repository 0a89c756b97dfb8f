"""End-to-end sweeps on real images with local Ray: grid, Optuna + ASHA, resume after a kill, two nodes.

Small on purpose (a few hundred images, tinycnn students, 1-3 epochs): these
check behaviour, not accuracy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]
TUNE = ROOT / "scripts" / "tune.py"
pytestmark = pytest.mark.slow

SPACE = """
grid:
  temperature: [2, 8]
  alpha: [0, 0.5]  # alpha = 0 is the baseline: never trained as a distilled configuration
optuna:
  temperature: {loguniform: [1, 20]}
  alpha: {uniform: [0.1, 0.9]}
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweeps")
    (folder / "spaces").mkdir()
    (folder / "spaces" / "tiny.yaml").write_text(SPACE)
    return folder


def small_args(workdir: Path, mini_data_dir: Path, name: str, *extra: str) -> list[str]:
    return [
        "--preset", "quick", "--teacher", "tinycnn", "--student", "tinycnn", "--teacher-epochs", "1",
        "--train-subset", "400", "--val-size", "200", "--data-dir", str(mini_data_dir), "--name", name,
        "--results-dir", str(workdir / "results"), "--teacher-store", str(workdir / "teachers"), *extra,
    ]


def env(workdir: Path) -> dict:
    return {**os.environ, "KDTUNE_SEARCH_SPACES": str(workdir / "spaces"), "PYTHONPATH": str(ROOT)}


def run_tune(workdir: Path, args: list[str], timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TUNE), *args], env=env(workdir), capture_output=True, text=True,
                          timeout=timeout, cwd=workdir)


def trials(workdir: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(workdir / "results" / name / "summary.csv")


def tune_trial_folders(workdir: Path, name: str, phase: str) -> list[Path]:
    """The Tune trials of a phase: the baseline's is the sweep experiment's trial whose config names it."""
    folder = "confirm" if phase == "confirm" else "sweep"
    return [trial for trial in sorted((workdir / "results" / name / folder).glob("kd_trainable_*"))
            if json.loads((trial / "params.json").read_text()).get("phase", folder) == phase]


def trained_configs(workdir: Path, name: str, phase: str) -> list[dict]:
    """The RunConfig each student of a phase actually trained with, from its pack's last checkpoint."""
    import torch

    configs = []
    for trial in tune_trial_folders(workdir, name, phase):
        state = sorted(trial.glob("checkpoint_*/state.pt"))[-1]
        configs += [member["config"] for member in torch.load(state, weights_only=True)["members"]]
    return configs


def run_span(trial: Path) -> tuple[float, float]:
    """When a Tune trial started and when it last reported, as Tune recorded them (seconds since the epoch)."""
    from ray.tune import ExperimentAnalysis

    (state,) = [t for t in ExperimentAnalysis(str(trial.parent)).trials if t.trial_id in trial.name]
    return state.run_metadata.start_time, state.run_metadata.last_result_time


def test_grid_sweep_runs_baseline_and_every_point_with_every_seed(workdir, mini_data_dir):
    done = run_tune(workdir, ["--grid", "tiny", "--seeds", "2", "--epochs", "2", "--confirm", "2",
                              "--confirm-fresh-views", *small_args(workdir, mini_data_dir, "grid")])
    assert done.returncode == 0, done.stderr[-3000:]
    table = trials(workdir, "grid")
    assert len(table) == 10  # 2 baseline seeds + 2 temperatures x 2 seeds (alpha 0 left out) + 2 x 2 confirmation
    # Each configuration's seeds trained together, as one Tune trial (a pack): 1 + 2 + 2 trials, the baseline's
    # the sweep experiment's first, no experiment of its own.
    assert [len(tune_trial_folders(workdir, "grid", phase)) for phase in ("baseline", "sweep", "confirm")] == [1, 2, 2]
    assert not (workdir / "results" / "grid" / "baseline").exists()
    # The baseline shared the sweep's two slots: a sweep trial started while the baseline was still training.
    base_start, base_end = run_span(tune_trial_folders(workdir, "grid", "baseline")[0])
    starts = sorted(run_span(trial)[0] for trial in tune_trial_folders(workdir, "grid", "sweep"))
    assert starts[0] < base_end, (base_start, starts, base_end)
    assert table.groupby(["phase", "temperature", "alpha"])["trial_id"].apply(
        lambda ids: len({i.rsplit("_s", 1)[0] for i in ids})).eq(1).all()
    assert (table["outcome"] == "finished").all() and (table["epochs_run"] == 2).all()
    sweep = table[table["phase"] == "sweep"]
    assert sorted(zip(sweep["temperature"], sweep["seed"])) == [(2, 0), (2, 1), (8, 0), (8, 1)]
    assert (sweep["alpha"] == 0.5).all()
    assert (table[table["phase"] == "baseline"]["alpha"] == 0).all()
    curve = json.loads((workdir / "results" / "grid" / "temperature_results.json").read_text())
    assert set(curve) == {"0.5"} and set(curve["0.5"]) == {"2", "8"}  # alpha varied: one curve per alpha
    assert curve["0.5"]["2"] == pytest.approx(sweep[sweep["temperature"] == 2]["final_test_acc"].mean())
    record = json.loads((workdir / "results" / "grid" / "experiment.json").read_text())
    assert record["teacher"]["val_acc"] > 0 and record["settings"]["seeds"] == 2
    assert record["teacher"]["config"]["label_smoothing"] == 0.0
    # The teacher and its cache were made once and stored for reuse; the teacher trained on its own views
    # (stream 0), the search's students on stream 1, the confirmation (--confirm-fresh-views) on stream 2.
    assert len(list((workdir / "teachers").glob("tinycnn-*/model.pt"))) == 1
    assert record["teacher"]["config"]["aug_seed"] == 0 and record["settings"]["aug_seed"] == 1
    caches = sorted(p.name.split("-aug")[1] for p in (workdir / "teachers").glob("tinycnn-*/model-logits/*"))
    assert caches == [f"1-{record['cache_mode']}", f"2-{record['cache_mode']}"], caches

    # Baseline and distilled students trained with the same settings, alpha and T aside (and the seed).
    students = record["students"]
    assert students["label_smoothing"] == 0.0 and students["seeds"] == [0, 1]
    assert students["lr"] == 0.1 and students["batch_size"] == 256  # the strong recipe's, resolved
    baseline, distilled = trained_configs(workdir, "grid", "baseline"), trained_configs(workdir, "grid", "sweep")
    assert len(baseline) == 2 and len(distilled) == 4
    for a in baseline:
        for b in distilled:
            differing = {k for k in a if a[k] != b[k]}
            assert differing == {"alpha", "temperature"} | ({"seed"} if a["seed"] != b["seed"] else set()), differing
        shared = {k: v for k, v in a.items() if k not in ("alpha", "temperature", "seed", "lr", "batch_size", "method")}
        assert shared == {k: students[k] for k in shared}  # as experiment.json records them

    # The confirmation: the chosen configuration and the baseline again on fresh seeds 2 and 3.
    chosen = record["confirm"]
    assert chosen["seeds"] == [2, 3] and chosen["alpha"] == 0.5 and chosen["temperature"] in (2, 8)
    finals = sweep.groupby("temperature")["final_val_acc"].mean()
    assert chosen["temperature"] == finals.idxmax()
    confirm = table[table["phase"] == "confirm"]
    assert sorted(zip(confirm["alpha"], confirm["seed"])) == [(0, 2), (0, 3), (0.5, 2), (0.5, 3)]
    assert (confirm.loc[confirm["alpha"] > 0, "temperature"] == chosen["temperature"]).all()
    report = subprocess.run([sys.executable, str(ROOT / "scripts" / "report.py"), str(workdir / "results" / "grid")],
                            env=env(workdir), capture_output=True, text=True, timeout=300, cwd=workdir)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "**Re-measured on 2 fresh seeds** (never used in the search)" in report.stdout
    assert "optimistic (selected among 2)" in report.stdout and "Confirmed" not in report.stdout
    configs = pd.read_csv(workdir / "results" / "grid" / "report" / "summary.csv")
    assert not ((configs["phase"] == "sweep") & (configs["alpha"] == 0)).any()  # no KD row with alpha = 0
    assert configs["complete"].all()


USER_MODELS = """
from torch import nn

from kdtune.engine.models import create_model

def teacher_net(num_classes):
    return create_model("resnet20", num_classes)

def student_net(num_classes):
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * 16, num_classes))
"""


def test_packs_of_any_configurations_reproduce_the_unpacked_grid(workdir, mini_data_dir):
    """--pack 4: the baseline's 2 students and the grid's 4 in 2 Tune trials (no baseline experiment of its own),
    each student exactly as the grid run above trained it alone in its configuration's pack."""
    done = run_tune(workdir, ["--grid", "tiny", "--seeds", "2", "--epochs", "2", "--pack", "4",
                              *small_args(workdir, mini_data_dir, "packed")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (workdir / "results" / "packed" / "baseline").exists()
    assert len(list((workdir / "results" / "packed" / "sweep").glob("kd_trainable_*"))) == 2
    packed = trials(workdir, "packed")
    grid = trials(workdir, "grid")
    grid = grid[grid["phase"] != "confirm"]
    key = ["phase", "temperature", "alpha", "seed"]
    assert sorted(map(tuple, packed[key].to_numpy())) == sorted(map(tuple, grid[key].to_numpy()))
    merged = packed.merge(grid, on=key, suffixes=("_packed", "_alone"))
    assert len(merged) == 6 and (merged["outcome_packed"] == "finished").all()
    for column in ("final_val_acc", "final_test_acc", "final_val_nll"):
        assert (merged[f"{column}_packed"] == merged[f"{column}_alone"]).all(), column


def test_own_models_and_three_class_images_end_to_end(workdir, three_class_dir, tmp_path):
    """module:callable teacher and student reach Ray's workers through --py-modules (the driver's directory does
    not hold them); 3 classes of 40x40 images; then the report."""
    code = tmp_path / "user-code"
    code.mkdir()
    (code / "shapes_models.py").write_text(USER_MODELS)
    args = ["--grid", "tiny", "--preset", "quick", "--teacher", "shapes_models:teacher_net",
            "--student", "shapes_models:student_net", "--py-modules", str(code / "shapes_models.py"),
            "--teacher-epochs", "2", "--epochs", "2", "--seeds", "1", "--train-subset", "150", "--val-size", "30",
            "--data-dir", str(three_class_dir), "--name", "shapes", "--results-dir", str(workdir / "results"),
            "--teacher-store", str(workdir / "teachers")]
    done = run_tune(workdir, args)
    assert done.returncode == 0, done.stderr[-3000:]
    table = trials(workdir, "shapes")
    assert len(table) == 3 and (table["outcome"] == "finished").all()
    record = json.loads((workdir / "results" / "shapes" / "experiment.json").read_text())
    assert record["data"]["classes"] == 3 and record["data"]["image_size"] == [40, 40]
    assert record["settings"]["student"] == "shapes_models:student_net" and record["teacher"]["num_classes"] == 3
    assert len(list((workdir / "teachers").glob("shapes_models_teacher_net-*/model.pt"))) == 1

    report = subprocess.run([sys.executable, str(ROOT / "scripts" / "report.py"), str(workdir / "results" / "shapes")],
                            env=env(workdir), capture_output=True, text=True, timeout=300, cwd=workdir)
    assert report.returncode == 0, report.stderr[-3000:]
    out = workdir / "results" / "shapes" / "report"
    for name in ("summary.md", "summary.csv", "temperature_analysis.png", "learning_curves.png",
                 "fidelity_calibration.png"):
        assert (out / name).stat().st_size > 0, name
    markdown = (out / "summary.md").read_text()
    assert "Teacher shapes_models:teacher_net" in markdown and "Students shapes_models:student_net" in markdown


def test_optuna_with_asha_stops_some_trials_early(workdir, mini_data_dir):
    # The cosine schedule has no warm-up, so ASHA may decide from the first epoch.
    done = run_tune(workdir, ["--optuna", "tiny", "--num-samples", "6", "--epochs", "3", "--grace-period", "1",
                              "--recipe", "cosine",
                              "--reduction-factor", "2", "--max-concurrent", "2",
                              *small_args(workdir, mini_data_dir, "optuna")])
    assert done.returncode == 0, done.stderr[-3000:]
    table = trials(workdir, "optuna")
    sweep = table[table["phase"] == "sweep"]
    assert len(sweep) == 6
    assert sweep["temperature"].between(1, 20).all() and sweep["alpha"].between(0.1, 0.9).all()
    assert sweep["temperature"].nunique() == 6  # sampled, not one point repeated
    assert (sweep["outcome"] == "stopped early").any() and (sweep["outcome"] == "finished").any()
    assert (sweep.loc[sweep["outcome"] == "stopped early", "epochs_run"] < 3).all()


def test_resume_after_the_driver_is_killed_runs_only_what_was_unfinished(workdir, mini_data_dir):
    args = ["--grid", "tiny", "--seeds", "1", "--epochs", "3", "--max-concurrent", "1",
            *small_args(workdir, mini_data_dir, "killed")]
    proc = subprocess.Popen([sys.executable, str(TUNE), *args], env=env(workdir), cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    results = workdir / "results" / "killed"

    def distilled_started() -> bool:  # one slot: the baseline, the sweep experiment's first trial, has finished
        # Tune copies result.json into the experiment folder on its syncs, each file in turn: both files are
        # waited for, so that the kill does not land inside the copy that is bringing the baseline's.
        copied = [("phase" in json.loads((p.parent / "params.json").read_text()), p.read_text())
                  for p in results.glob("sweep/*/result.json")]
        return (any(text for baseline, text in copied if not baseline)
                and any(len(text.splitlines()) == 3 for baseline, text in copied if baseline))

    try:
        assert wait_for(distilled_started, 300), "the sweep's distilled trial never started"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, with no chance to clean up
        proc.wait()
    (baseline,) = [folder / "result.json" for folder in tune_trial_folders(workdir, "killed", "baseline")]
    before = baseline.read_text()
    assert len(before.splitlines()) == 3  # the baseline had finished

    done = run_tune(workdir, ["--resume", "--name", "killed", "--results-dir", str(workdir / "results"),
                              "--teacher-store", str(workdir / "teachers")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert baseline.read_text() == before  # finished trials are not trained again
    table = trials(workdir, "killed")
    assert len(table) == 3 and (table["outcome"] == "finished").all()
    assert not table.duplicated(["phase", "temperature", "alpha", "seed"]).any()
    for result in results.glob("sweep/*/result.json"):
        epochs = [json.loads(line)["epoch"] for line in result.read_text().splitlines()]
        assert sorted(set(epochs)) == [1, 2, 3]


def test_two_node_cluster_places_trials_on_the_worker_node(own_ray, workdir, mini_data_dir, tmp_path):
    ray = own_ray  # this test's ray.init(address=cluster.address): no other Ray may be initialized here
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    worker = cluster.add_node(num_cpus=2)
    try:
        cluster.wait_for_nodes()
        sys.path.insert(0, str(ROOT / "scripts"))
        import tune as tune_script  # noqa: PLC0415

        # A local path cannot serve trials on another node: refused before any work.
        ray.init(address=cluster.address)
        os.environ["KDTUNE_SEARCH_SPACES"] = str(workdir / "spaces")
        with pytest.raises(SystemExit) as refused:
            from kdtune.cli.args import run_cli

            run_cli(tune_script.main, ["--grid", "tiny", "--seeds", "1", "--epochs", "1", "--address", cluster.address,
                                       *small_args(workdir, mini_data_dir, "refused")])
        assert refused.value.code == 1
        storage = f"file://{tmp_path / 'shared-storage'}"
        code = tune_script.main(["--grid", "tiny", "--seeds", "1", "--epochs", "1", "--address", cluster.address,
                                 "--storage-path", storage, *small_args(workdir, mini_data_dir, "cluster")])
        assert code == 0
        nodes = set()
        for result in (tmp_path / "shared-storage" / "cluster").glob("*/*/result.json"):
            nodes |= {json.loads(line)["node_id"] for line in result.read_text().splitlines()}
        assert nodes == {worker.node_id}
        assert len(trials(workdir, "cluster")) == 3
    finally:
        os.environ.pop("KDTUNE_SEARCH_SPACES", None)
        ray.shutdown()
        cluster.shutdown()
