"""Bad input to scripts/tune.py: refused before any training, in one line, with a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tune(tmp_path: Path, *args: str, spaces: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if spaces is not None:
        env["KDTUNE_SEARCH_SPACES"] = str(spaces)
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "tune.py"), *args, "--results-dir", str(tmp_path / "results"),
         "--teacher-store", str(tmp_path / "teachers")],
        env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )


def assert_refused(done: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    # Progress bars and Ray's start-up notice may precede it; the error itself is one line, the last.
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    assert len(errors) == 1 and errors[0] == lines[-1], done.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def assert_nothing_trained(tmp_path: Path) -> None:
    assert not list(tmp_path.glob("teachers/*/model.pt"))
    assert not list(tmp_path.glob("results/*"))  # no experiment folder left behind, not even an empty one


@pytest.mark.parametrize(
    "args, code, fragments",
    [
        (["--grid", "nosuch"], 1, ["unknown search space 'nosuch'", "temperature"]),
        (["--grid", "temperature", "--preset", "huge"], 1, ["unknown preset 'huge'", "quick"]),
        (["--optuna", "joint", "--sampler", "grid"], 2, ["--sampler", "'grid'"]),
        (["--optuna", "joint", "--num-samples", "0"], 2, ["--num-samples", "'0'"]),
        (["--grid", "temperature", "--seeds", "-1"], 2, ["--seeds", "'-1'"]),
        (["--grid", "temperature", "--epochs", "0"], 2, ["--epochs", "'0'"]),
        (["--grid", "temperature", "--optuna", "joint"], 2, ["not allowed with"]),
        (["--grid", "temperature", "--student", "nosuchnet"], 1, ["unknown model 'nosuchnet'", "cnn3"]),
        (["--grid", "temperature", "--recipe", "nosuch"], 1, ["unknown recipe 'nosuch'", "strong"]),
        (["--grid", "temperature", "--reduction-factor", "1"], 1, ["reduction-factor 1"]),
        (["--resume"], 2, ["--resume needs --name"]),
        (["--resume", "--name", "never-ran"], 1, ["never-ran", "nothing to resume"]),
        ([], 2, ["--grid SPACE or --optuna SPACE"]),
    ],
)
def test_bad_flags_are_refused_in_one_line(tmp_path, args, code, fragments):
    assert_refused(tune(tmp_path, *args), code, *fragments)
    assert_nothing_trained(tmp_path)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("grid: !!python/object/apply:os.system ['touch pwned']\n", "not valid YAML"),
        ("grid:\n  temperature: [0, 1]\n  alpha: 0.5\n", "invalid value 0"),
        ("grid:\n  temperature: [1, 2\n", "not valid YAML"),
    ],
)
def test_bad_search_space_files_are_refused(tmp_path, text, fragment):
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    (spaces / "mine.yaml").write_text(text)
    assert_refused(tune(tmp_path, "--grid", "mine", spaces=spaces), 1, fragment)
    assert not (tmp_path / "pwned").exists()


def test_unreachable_cluster_address(tmp_path, mini_data_dir):
    done = tune(tmp_path, "--grid", "temperature", "--preset", "quick", "--data-dir", str(mini_data_dir),
                "--train-subset", "100", "--val-size", "100", "--address", "127.0.0.1:1")
    assert_refused(done, 1, "cannot reach the Ray cluster at '127.0.0.1:1'")
    assert_nothing_trained(tmp_path)


def test_unwritable_storage_path(tmp_path, mini_data_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = tune(tmp_path, "--grid", "temperature", "--preset", "quick", "--data-dir", str(mini_data_dir),
                "--train-subset", "100", "--val-size", "100", "--storage-path", str(blocker / "sub"))
    assert_refused(done, 1, "cannot be written", str(blocker))
    assert_nothing_trained(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("flag, fragment", [(["--gpus-per-trial", "0.5"], "gpus-per-trial 0.5"),
                                             (["--cpus-per-trial", "64"], "cpus-per-trial 64")])
def test_resources_no_node_has_are_refused(tmp_path, mini_data_dir, flag, fragment):
    done = tune(tmp_path, "--grid", "temperature", "--preset", "quick", "--data-dir", str(mini_data_dir),
                "--train-subset", "100", "--val-size", "100", *flag)
    assert_refused(done, 1, fragment, "more than any node has")
    assert_nothing_trained(tmp_path)


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path, mini_data_dir):
    done = tune(tmp_path, "--grid", "temperature", "--preset", "quick", "--seeds", "2", "--data-dir",
                str(mini_data_dir), "--train-subset", "200", "--val-size", "100", "--dry-run")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "baseline (no distillation, alpha 0): 2 trials" in out
    assert "alpha=0.5, temperature=20 x 2 seeds" in out
    assert "total: 22 trials, up to 132 student epochs" in out
    assert "estimated cost on this machine" in out and "student img/s" in out
    assert_nothing_trained(tmp_path)
