"""--resume: which options it takes, what experiment.json records; Ctrl-C through the real CLI, then a resume by name.

The fast tests call tune.py's main() in-process on a hand-made record; the slow one runs the CLI
on a tiny experiment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import wait_for

from kdtune.cli.args import ArgumentParser, given_options, run_cli
from kdtune.sweep.resume import (
    absolute,
    environment_changes,
    kept_by_tune,
    recorded_resources,
    recorded_settings,
    resume_command,
    save_record,
    start_record,
    tune_has_run,
)
from kdtune.sweep.settings import Resources, build_settings

ROOT = Path(__file__).resolve().parents[1]
TUNE = ROOT / "scripts" / "tune.py"
sys.path.insert(0, str(ROOT / "scripts"))
import tune as tune_script  # noqa: E402


def test_given_options_are_those_typed_whatever_their_defaults():
    p = ArgumentParser()
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--preset", default="paper")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--py-modules", action="append", default=[])
    for argv, typed in [([], set()), (["--resume"], {"resume"}), (["--epochs", "3"], {"epochs"}),
                        (["--epo", "4", "--preset=paper"], {"epochs", "preset"}),
                        (["--py-modules", "a.py", "--py-modules", "b.py"], {"py_modules"})]:
        assert given_options(p, p.parse_args(argv), argv) == typed, argv


@pytest.fixture()
def recorded(tmp_path):
    """An experiment folder holding only its experiment.json, as a run interrupted early leaves it."""
    settings = build_settings("exp", "grid", "temperature", "quick", data_dir=str(tmp_path / "data"), seeds=1,
                              train_subset=5000,
                              num_samples=1, sampler="tpe", search_seed=0, asha=False, grace_period=1,
                              reduction_factor=2, max_failures=0)
    root = tmp_path / "results" / "exp"
    resources = absolute(Resources(max_concurrent=1, teacher_store=str(tmp_path / "teachers")))
    save_record(root, start_record(None, settings, resources, str(root), "fp32"))
    return root


def resume(root: Path, *extra: str) -> list[str]:
    return ["--resume", "--name", root.name, "--results-dir", str(root.parent), *extra]


@pytest.mark.parametrize("extra, flag, shown", [
    (["--epochs", "5"], "--epochs", "5 (recorded: 6)"), (["--seeds", "3"], "--seeds", "3 (recorded: 1)"),
    (["--student", "cnn3"], "--student", "cnn3 (recorded: tinycnn)"), (["--lr", "0.1"], "--lr", "0.1 (recorded: None)"),
    (["--data-dir", "elsewhere"], "--data-dir", "elsewhere (recorded: "), (["--asha"], "--asha", "(recorded: --no-asha)"),
    (["--preset", "paper"], "--preset", "paper (recorded: quick)"),
    (["--grid", "alpha"], "--grid", "alpha (recorded: temperature)")])
def test_resume_refuses_what_would_change_the_results(recorded, capsys, extra, flag, shown):
    before = (recorded / "experiment.json").read_bytes()
    with pytest.raises(SystemExit) as exit_:
        run_cli(tune_script.main, resume(recorded, *extra))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {flag} {shown}") and "--resume" in err, err
    assert (recorded / "experiment.json").read_bytes() == before


def fake_run_sweep(seen: dict):
    def run(settings, resources, root, previous):
        seen.update(settings=settings, resources=resources, previous=previous)
        raise KeyboardInterrupt  # stop here: nothing to train in this test

    return run


def test_resume_accepts_the_interrupted_commands_own_flags_again(recorded, monkeypatch):
    """The up arrow, then --resume: every flag of the command that started it, with the values it recorded."""
    import kdtune.sweep.runner

    seen = {}
    monkeypatch.setattr(kdtune.sweep.runner, "run_sweep", fake_run_sweep(seen))
    data = json.loads((recorded / "experiment.json").read_text())["settings"]["data_dir"]
    before = signal.getsignal(signal.SIGINT)
    try:
        assert tune_script.main(resume(recorded, "--grid", "temperature", "--preset", "quick", "--seeds", "1",
                                       "--epochs", "6", "--data-dir", data, "--no-asha", "--train-subset", "5000",
                                       "--sampler", "tpe", "--grace-period", "1", "--reduction-factor", "2")) == 130
    finally:
        signal.signal(signal.SIGINT, before)
    assert seen["settings"].to_dict() == json.loads((recorded / "experiment.json").read_text())["settings"]


def test_resume_of_an_earlier_kdtunes_experiment_is_refused_in_one_line(recorded, capsys):
    record = json.loads((recorded / "experiment.json").read_text())
    del record["kdtune_version"]  # as kdtune 0.1 wrote it
    (recorded / "experiment.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit) as exit_:
        run_cli(tune_script.main, resume(recorded))
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 1 and len(err.splitlines()) == 1, err
    assert "started by an earlier kdtune" in err and "can be reported" in err and "not resumed" in err


@pytest.mark.parametrize("text", ["", "{\"settings\": ", "[1, 2]", "{\"teacher\": {}, \"storage\": \"x\"}"])
def test_resume_of_a_damaged_record_is_refused_in_one_line(recorded, capsys, text):
    (recorded / "experiment.json").write_text(text)
    with pytest.raises(SystemExit) as exit_:
        run_cli(tune_script.main, resume(recorded))
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 1 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "experiment.json" in err


def test_resume_takes_placement_options_and_the_recorded_ones_otherwise(recorded, monkeypatch):
    seen = {}
    import kdtune.sweep.runner

    monkeypatch.setattr(kdtune.sweep.runner, "run_sweep", fake_run_sweep(seen))
    before = signal.getsignal(signal.SIGINT)
    try:
        assert tune_script.main(resume(recorded, "--cpus-per-trial", "2", "--address", "auto")) == 130
    finally:
        signal.signal(signal.SIGINT, before)  # main() made Ctrl-C exit at once, as after a real interrupt
    record = json.loads((recorded / "experiment.json").read_text())
    assert seen["settings"].to_dict() == record["settings"] and seen["previous"] == record
    assert (seen["resources"].cpus_per_trial, seen["resources"].address) == (2.0, "auto")  # given now
    assert seen["resources"].max_concurrent == 1  # as recorded
    assert seen["resources"].teacher_store == record["resources"]["teacher_store"]


def test_resources_a_restored_phase_keeps_are_named():
    previous = {"resources": {"cpus_per_trial": 1.0, "gpus_per_trial": 0.0, "max_concurrent": None, "address": None}}
    assert kept_by_tune(previous, Resources(address="auto")) == []
    assert kept_by_tune(previous, Resources(gpus_per_trial=0.5, max_concurrent=2)) == ["--gpus-per-trial",
                                                                                     "--max-concurrent"]


def test_a_tune_folder_with_only_its_tuner_has_not_run(tmp_path):
    folder = tmp_path / "sweep"
    assert not tune_has_run(str(folder))
    folder.mkdir()
    (folder / "tuner.pkl").write_bytes(b"")
    assert not tune_has_run(str(folder))
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    assert tune_has_run(str(folder)) and tune_has_run(f"file://{folder}")


def test_resume_command_names_the_results_folder_only_when_it_is_not_the_default():
    assert resume_command("x", "results") == "kdtune tune --resume --name x"
    assert resume_command("a b", "/r") == "kdtune tune --resume --name 'a b' --results-dir /r"


# ----------------------------------------------------------------------------- Ctrl-C and resume, through the CLI

SPACE = "grid:\n  temperature: [4]\n  alpha: 0.5\n"


@pytest.mark.slow
def test_ctrl_c_in_the_sweep_stops_everything_and_the_name_alone_resumes(tmp_path, mini_data_dir):
    """Ctrl-C while the sweep experiment (the baseline and the grid) trains: no later phase starts, and the
    experiment's name alone finishes it."""
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "tiny.yaml").write_text(SPACE)
    env = {**os.environ, "KDTUNE_SEARCH_SPACES": str(tmp_path / "spaces"), "PYTHONPATH": str(ROOT)}
    results, name = tmp_path / "results", "stopped"
    root = results / name
    # Epochs enough that the sweep is still training when Ctrl-C arrives (bf16 students finish 3 in seconds).
    argv = ["--grid", "tiny", "--seeds", "1", "--epochs", "10", "--max-concurrent", "2", "--confirm", "1",
            "--preset", "quick", "--teacher", "tinycnn", "--student", "tinycnn", "--teacher-epochs", "1", "--train-subset", "300",
            "--val-size", "100", "--data-dir", str(mini_data_dir), "--name", name, "--results-dir", str(results),
            "--teacher-store", str(tmp_path / "teachers")]
    proc = subprocess.Popen([sys.executable, str(TUNE), *argv], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        started = wait_for(lambda: any(p.stat().st_size > 0 for p in root.glob("sweep/*/result.json")), 600)
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the driver and everything it started
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert started, "the sweep never started: " + err[-3000:]
    assert proc.returncode == 130, err[-3000:]
    assert f"finish it with: kdtune tune --resume --name {name} --results-dir {results}" in err
    assert not list(root.glob("confirm/*/result.json")), err[-3000:]  # no trial of a new phase started after Ctrl-C
    record = json.loads((root / "experiment.json").read_text())
    assert record["status"] == "interrupted" and record["phases_started"] == ["sweep"]
    assert "interrupted" in out and (root / "summary.csv").is_file()

    # Tune's state missing where the record says: a clear error, and nothing started over.
    moved = tmp_path / "moved-sweep"
    shutil.move(root / "sweep", moved)
    # A Ctrl-C while the next phase's Tuner was being built can leave its folder (never run): it may exist.
    confirm_before = sorted(p.name for p in (root / "confirm").rglob("*")) if (root / "confirm").exists() else None
    lost = subprocess.run([sys.executable, str(TUNE), "--resume", "--name", name, "--results-dir", str(results)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert lost.returncode == 1 and "Tune's state of the sweep phase is not in" in lost.stderr, lost.stderr[-3000:]
    assert not (root / "sweep").exists()  # nothing started over, and nothing new in a later phase
    assert (sorted(p.name for p in (root / "confirm").rglob("*")) if (root / "confirm").exists() else None) == \
        confirm_before
    shutil.move(moved, root / "sweep")

    done = subprocess.run([sys.executable, str(TUNE), "--resume", "--name", name, "--results-dir", str(results)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(root / "summary.csv")
    assert len(table) == 4 and (table["outcome"] == "finished").all() and (table["epochs_run"] == 10).all()
    assert sorted(table["phase"]) == ["baseline", "confirm", "confirm", "sweep"]
    assert not table.duplicated(["phase", "temperature", "alpha", "seed"]).any()
    assert json.loads((root / "experiment.json").read_text())["status"] == "finished"
    assert len(list((tmp_path / "teachers").glob("tinycnn-*/model.pt"))) == 1  # the teacher was not trained again


def test_a_record_says_what_it_ran_on_and_a_resume_elsewhere_is_noted(recorded):
    import platform

    import ray
    import torch

    record = json.loads((recorded / "experiment.json").read_text())
    env = record["environment"]
    assert (env["torch"], env["ray"], env["python"]) == (torch.__version__, ray.__version__, platform.python_version())
    assert env["threads_per_trial"] == 1 and env["precision"] == "auto" and env["cache_precision"] == "fp32"
    assert env["device"]  # the CPU's or GPU's name
    settings, resources = recorded_settings(record), recorded_resources(record, {})
    again = start_record(record, settings, resources, record["storage"], "fp32")
    assert again["environment"] == env and "resumed_on" not in again  # the same machine: nothing to say
    elsewhere = {**record, "environment": {**env, "torch": "1.0.0"}}
    moved = start_record(elsewhere, settings, resources, record["storage"], "fp32")
    assert moved["environment"]["torch"] == "1.0.0"  # where it started stays recorded
    assert environment_changes(moved["environment"], moved["resumed_on"][-1]) == [
        f"torch {torch.__version__} (started on 1.0.0)"]
