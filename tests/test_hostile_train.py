"""`kdtune train` against its own outputs (issue 19): an earlier run's files are never replaced silently, a path
that cannot be written is refused before any training, and a write that fails after training keeps the work.

Every run is a tiny one on a 3-class PNG folder, in this process (helpers.run_command).
"""

from __future__ import annotations

import errno
import re
import threading
from pathlib import Path

import pytest
import torch
from helpers import offline_env, run_command

import kdtune.cli.single_run as single_run
import kdtune.engine.teacher as teacher_module
from kdtune.cli.train import main as train_main
from kdtune.engine.checkpoint import load_model

TINY = ["--teacher", "tinycnn", "--student", "tinycnn", "--epochs", "1", "--val-size", "30", "--train-subset", "60",
        "--no-progress"]


@pytest.fixture
def run_main(tmp_path, monkeypatch, capfd, one_thread, three_class_dir):
    """run_main(*args) -> CompletedProcess: `kdtune train --data-dir <3 classes> TINY ARGS` from tmp_path."""
    offline_env(monkeypatch, tmp_path / "teachers")
    return lambda *args: run_command(train_main, [*TINY, "--data-dir", str(three_class_dir), *args], capfd, tmp_path,
                                     prog="kdtune train")


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if a student or a teacher starts training."""

    def train(*args, **kwargs):
        pytest.fail("trained, though the run should have been refused first")

    monkeypatch.setattr(single_run, "train", train)
    monkeypatch.setattr(teacher_module, "train", train)


def one_line_error(result) -> str:
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def outputs(json_path: Path) -> dict[str, bytes]:
    return {s: json_path.with_suffix(s).read_bytes() for s in (".json", ".pt", ".png")}


# ----------------------------------------------------------------------------- earlier results


def test_same_output_twice_is_refused_before_training(tmp_path, run_main, monkeypatch):
    output = tmp_path / "runs" / "same.json"
    first = run_main("--mode", "student", "--seed", "0", "--output", str(output))
    assert first.returncode == 0, first.stderr[-3000:]
    before = outputs(output)

    def train(*args, **kwargs):
        pytest.fail("trained, though the run should have been refused first")

    monkeypatch.setattr(single_run, "train", train)
    line = one_line_error(run_main("--mode", "student", "--seed", "1", "--output", str(output)))
    assert str(output) in line and "--overwrite" in line and "--output" in line
    assert outputs(output) == before


@pytest.mark.parametrize("suffix", [".pt", ".png"])
def test_an_output_whose_model_or_figure_exists_is_refused(tmp_path, run_main, no_training, suffix):
    output = tmp_path / "run.json"
    output.with_suffix(suffix).write_bytes(b"an earlier run's")
    line = one_line_error(run_main("--mode", "student", "--output", str(output)))
    assert str(output.with_suffix(suffix)) in line and "--overwrite" in line
    assert output.with_suffix(suffix).read_bytes() == b"an earlier run's" and not output.exists()


def test_overwrite_replaces_an_earlier_run(tmp_path, run_main):
    output = tmp_path / "same.json"
    assert run_main("--mode", "student", "--seed", "0", "--output", str(output)).returncode == 0
    before = outputs(output)
    again = run_main("--mode", "student", "--seed", "1", "--output", str(output), "--overwrite")
    assert again.returncode == 0, again.stderr[-3000:]
    after = outputs(output)
    assert after[".json"] != before[".json"] and after[".pt"] != before[".pt"]
    assert '"seed": 1' in after[".json"].decode()


def test_default_names_started_in_the_same_second_differ(tmp_path, run_main, monkeypatch):
    monkeypatch.setattr(single_run.time, "strftime", lambda fmt, *args: "20250101-120000")
    runs = [run_main("--mode", "student", "--seed", str(seed)) for seed in (0, 1)]
    assert all(run.returncode == 0 for run in runs), [run.stderr[-2000:] for run in runs]
    names = sorted(p.name for p in (tmp_path / "results" / "runs").iterdir())
    assert names == ["student-20250101-120000-2.json", "student-20250101-120000-2.png", "student-20250101-120000-2.pt",
                     "student-20250101-120000.json", "student-20250101-120000.png", "student-20250101-120000.pt"]


def test_concurrent_claims_of_the_default_name_never_share_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(single_run.time, "strftime", lambda fmt, *args: "20250101-120000")
    start, claimed = threading.Barrier(8), []

    def claim():
        start.wait()
        claimed.append(single_run.claim_output(None, "distill"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({path for path, _ in claimed}) == 8 and all(created for _, created in claimed)


def test_a_failed_run_releases_its_output_name(tmp_path, run_main, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(single_run, "train", interrupted)
    output = tmp_path / "run.json"
    assert run_main("--mode", "student", "--output", str(output)).returncode == 130
    assert not output.exists()  # the placeholder that claimed the name is gone: the same --output works again


# ----------------------------------------------------------------------------- unwritable paths


def test_output_under_a_file_is_refused_before_training(tmp_path, run_main, no_training):
    (tmp_path / "afile").write_text("a file, not a folder\n")
    line = one_line_error(run_main("--mode", "student", "--output", str(tmp_path / "afile" / "x.json")))
    assert "--output" in line and str(tmp_path / "afile") in line and "not a folder" in line
    assert (tmp_path / "afile").read_text() == "a file, not a folder\n"


def test_output_that_is_a_folder_is_refused(tmp_path, run_main, no_training):
    (tmp_path / "x.json").mkdir()
    line = one_line_error(run_main("--mode", "student", "--output", str(tmp_path / "x.json"), "--overwrite"))
    assert "--output" in line and "folder" in line


@pytest.mark.parametrize("mode", ["teacher", "distill"])
def test_teacher_path_under_a_file_is_refused_before_training(tmp_path, run_main, no_training, mode):
    (tmp_path / "afile").write_text("a file, not a folder\n")
    output = tmp_path / "run.json"
    line = one_line_error(run_main("--mode", mode, "--teacher-path", str(tmp_path / "afile" / "t.pt"),
                                   "--output", str(output)))
    assert "--teacher-path" in line and str(tmp_path / "afile") in line
    assert not output.exists()


# ----------------------------------------------------------------------------- a failure after the work


@pytest.mark.parametrize("failure", [RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
                                     OSError(errno.ENOSPC, "No space left on device")])
def test_a_failed_final_save_keeps_the_model(tmp_path, run_main, monkeypatch, failure):
    output = tmp_path / "out" / "run.json"
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if Path(f).parent == output.parent:  # the disk of --output is full; the fallback's is not
            raise failure
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    line = one_line_error(run_main("--mode", "student", "--output", str(output)))
    assert str(output.with_suffix(".pt")) in line
    kept = Path(re.search(r"kept in (\S+\.pt)", line).group(1))
    model, meta = load_model(kept, expected_arch="tinycnn", num_classes=3)
    assert 0 <= meta["val_acc"] <= 1
    assert kept.with_suffix(".json").is_file()
    assert not output.exists()  # no placeholder left to block a rerun


def test_a_failed_json_of_a_teacher_run_keeps_its_results(tmp_path, run_main, monkeypatch):
    output = tmp_path / "run.json"
    real_save_json = single_run.save_json

    def save_json(path, obj):
        if Path(path) == output:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_save_json(path, obj)

    monkeypatch.setattr(single_run, "save_json", save_json)
    line = one_line_error(run_main("--mode", "teacher", "--output", str(output)))
    assert str(output) in line and "Permission denied" in line
    kept = Path(re.search(r"kept in (\S+\.json)", line).group(1))
    assert '"mode": "teacher"' in kept.read_text()
