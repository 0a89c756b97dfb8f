"""Bad input to scripts/tune.py: refused before any training, in one line, with a non-zero exit.

Its main() runs in this process, through run_cli as the script runs it (tune_main below); test_commands.py
starts the one real process that checks the same contract from a shell.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import run_command

ROOT = Path(__file__).resolve().parents[1]


def assert_refused(got: int, err: str, code: int, *fragments: str) -> None:
    """The exit code, no traceback, and one error line naming what was wrong. Progress bars and Ray's start-up
    notice may precede it; the error itself is the last line."""
    assert "Traceback" not in err, err
    assert_one_error_line(got, err, code, *fragments)


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
def test_bad_flags_are_refused_in_one_line(tmp_path, capsys, monkeypatch, args, code, fragments):
    monkeypatch.chdir(tmp_path)
    got, _, err = tune_main(args, capsys, tmp_path)
    assert_one_error_line(got, err, code, *fragments)
    assert_nothing_trained(tmp_path)


def assert_one_error_line(got: int, err: str, code: int, *fragments: str) -> None:
    """An in-process run's refusal: the exit code, and one error line, the last on stderr, naming what was wrong."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert got == code, err
    assert len(errors) == 1 and errors[0] == lines[-1], err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("grid: !!python/object/apply:os.system ['touch pwned']\n", "not valid YAML"),
        ("grid:\n  temperature: [0, 1]\n  alpha: 0.5\n", "invalid value 0"),
        ("grid:\n  temperature: [1, 2\n", "not valid YAML"),
    ],
)
def test_bad_search_space_files_are_refused(tmp_path, capsys, monkeypatch, text, fragment):
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    (spaces / "mine.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)  # where the hostile file's `touch pwned` would land, were it ever run
    monkeypatch.setenv("KDTUNE_SEARCH_SPACES", str(spaces))
    got, _, err = tune_main(["--grid", "mine"], capsys, tmp_path)
    assert_one_error_line(got, err, 1, fragment)
    assert not (tmp_path / "pwned").exists()


def test_unreachable_cluster_address(tmp_path, capsys, monkeypatch, mini_data_dir):
    ray = pytest.importorskip("ray")
    # connect() keeps a Ray already initialized in this process (the session's, when slow tests ran before):
    # as in a fresh process, there is none.
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    got, _, err = tune_main(["--grid", "temperature", "--preset", "quick", "--data-dir", str(mini_data_dir),
                             "--train-subset", "100", "--val-size", "100", "--address", "127.0.0.1:1"],
                            capsys, tmp_path)
    assert_refused(got, err, 1, "cannot reach the Ray cluster at '127.0.0.1:1'")
    assert_nothing_trained(tmp_path)


def test_unwritable_storage_path(tmp_path, capsys, mini_data_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    got, _, err = tune_main(["--grid", "temperature", "--preset", "quick", "--data-dir", str(mini_data_dir),
                             "--train-subset", "100", "--val-size", "100", "--storage-path", str(blocker / "sub")],
                            capsys, tmp_path)
    assert_refused(got, err, 1, "cannot be written", str(blocker))
    assert_nothing_trained(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("flag, fragment", [(["--gpus-per-trial", "0.5"], "gpus-per-trial 0.5"),
                                             (["--cpus-per-trial", "64"], "cpus-per-trial 64")])
def test_resources_no_node_has_are_refused(ray_session, tmp_path, capsys, mini_data_dir, flag, fragment):
    # connect() keeps the session's local Ray (2 CPUs), as a fresh process would start its own
    got, _, err = tune_main(["--grid", "temperature", "--preset", "quick", "--data-dir", str(mini_data_dir),
                             "--train-subset", "100", "--val-size", "100", *flag], capsys, tmp_path)
    assert_refused(got, err, 1, fragment, "more than any node has")
    assert_nothing_trained(tmp_path)


@pytest.fixture
def quick_measure(monkeypatch):
    """--dry-run times the teacher with one thread per CPU.  On a small shared CPU two OpenMP threads mostly wait
    for each other (seconds a step): the dry runs below time the same steps with one thread, and a tinycnn
    teacher where the teacher is not what they check."""
    from kdtune.engine import speed

    measure = speed.measure
    monkeypatch.setattr(speed, "measure", lambda model, batch_size, splits, device, threads, **kwargs:
                        measure(model, batch_size, splits, device, 1, **kwargs))


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys, quick_measure, mini_data_dir):
    code, out, err = tune_main(["--grid", "temperature", "--preset", "quick", "--teacher", "tinycnn", "--seeds", "2",
                                "--data-dir", str(mini_data_dir), "--train-subset", "200", "--val-size", "100",
                                "--dry-run"], capsys, tmp_path)
    assert code == 0, err
    assert "baseline (no distillation, alpha 0): 2 trials" in out
    assert "alpha=0.5, temperature=20 x 2 seeds" in out
    assert ("total: 22 students in 11 Tune trials (a configuration's seeds per trial; pack mode auto), up to 132 "
            "student epochs") in out
    assert "estimated wall clock on this machine" in out and "1 thread per trial" in out
    assert_nothing_trained(tmp_path)


# ----------------------------------------------------------------------------- the fair comparison's guards (in-process)


def tune_main(argv: list[str], capsys, tmp_path: Path) -> tuple[int, str, str]:
    """scripts/tune.py's main() in this process, as its command line would run it from tmp_path:
    (exit code, stdout, stderr)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tune_script", ROOT / "scripts" / "tune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    done = run_command(module.main, [*argv, "--results-dir", str(tmp_path / "results"),
                                     "--teacher-store", str(tmp_path / "teachers")], capsys, tmp_path, prog="tune.py")
    assert "Traceback" not in done.stderr
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["--grid", "temperature", "--preset", "quick", "--asha", "--grace-period", "2"], 1,
         "grace-period 2: ASHA would stop trials inside the learning-rate warm-up (epochs 1-2 of 6 under recipe "
         "'strong'); use --grace-period 3 or more"),
        (["--optuna", "joint", "--preset", "paper", "--grace-period", "6"], 1, "warm-up (epochs 1-6 of 30"),
        (["--grid", "temperature", "--label-smoothing", "1"], 2, "--label-smoothing: invalid value '1'"),
        (["--grid", "temperature", "--teacher-label-smoothing", "-0.1"], 2, "--teacher-label-smoothing"),
        (["--grid", "temperature", "--confirm", "-1"], 2, "--confirm: invalid value '-1'"),
        (["--grid", "onlyzero"], 1, "has no distilled configuration: alpha = 0 is the no-KD baseline"),
        (["--grid", "methods", "--preset", "seed"], 1,
         "point alpha 0.3, method ctkd, temperature 1: invalid temperature 1: must be strictly inside ctkd_range"),
        (["--grid", "methods", "--ctkd-range", "5", "21"], 1, "method ctkd, temperature 2: invalid temperature 2"),
        (["--grid", "methods", "--ctkd-range", "8", "2"], 1, "invalid ctkd_range (8.0, 2.0)"),
        (["--grid", "methods", "--ctkd-range", "1"], 2, "--ctkd-range: expected 2 arguments"),
        (["--grid", "methods", "--ctkd-ramp-epochs", "0"], 2, "--ctkd-ramp-epochs: invalid value '0'"),
        (["--grid", "methods", "--pack-mode", "stack"], 1, "pack-mode stack trains method kd only; this space also "
                                                             "has ctkd, dkd, ls"),
        (["--grid", "temperature", "--pack", "4", "--asha"], 1, "--pack 4 packs students of different configurations"),
        (["--optuna", "joint", "--pack", "4"], 1, "it needs a grid search without early stopping"),
        (["--grid", "temperature", "--pack-mode", "fused"], 2, "--pack-mode: invalid choice: 'fused'"),
        (["--optuna", "methods", "--ctkd-range", "2", "21"], 1,
         "invalid temperature distribution [1.5, 16] for method ctkd"),
    ],
)
def test_comparison_guards_refuse_in_one_line(tmp_path, capsys, monkeypatch, args, code, fragment):
    spaces = tmp_path / "spaces"
    shutil.copytree(ROOT / "search_spaces", spaces)
    (spaces / "onlyzero.yaml").write_text("grid:\n  temperature: [2, 4]\n  alpha: 0\n")
    monkeypatch.setenv("KDTUNE_SEARCH_SPACES", str(spaces))
    got, _, err = tune_main(args, capsys, tmp_path)
    assert got == code and err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "results").exists()


def test_dry_run_states_the_comparison(tmp_path, capsys, monkeypatch, quick_measure, mini_data_dir):
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    (spaces / "withzero.yaml").write_text("grid:\n  temperature: [2, 4]\n  alpha: [0, 0.5]\n")
    monkeypatch.setenv("KDTUNE_SEARCH_SPACES", str(spaces))
    code, out, _ = tune_main(["--grid", "withzero", "--preset", "quick", "--teacher", "tinycnn", "--asha", "--confirm",
                              "2", "--seeds", "2", "--data-dir", str(mini_data_dir), "--train-subset", "200",
                              "--val-size", "100", "--dry-run"], capsys, tmp_path)
    assert code == 0
    assert "temperature=2, alpha=0.5 x 2 seeds" in out and "alpha=0 x" not in out
    assert "alpha = 0 is the baseline above, not a distilled configuration: left out of the grid" in out
    assert "every student: recipe strong, 6 epochs, lr 0.1, batch 256, label smoothing 0" in out
    assert "ASHA early stopping: grace 3 epochs (warm-up: 2)" in out  # the first epoch after the warm-up
    assert ("confirmation: the chosen configuration (and up to 2 tied with it) and the baseline again on 2 fresh "
            "seeds 2..3: 4 students for one configuration") in out
    # 2 baseline + 2 points x 2 seeds + 4 confirmation students, in 1 + 2 + 2 packs
    assert "total: 10 students in 5 Tune trials" in out


def test_teacher_path_from_other_data_is_refused_before_any_work(tmp_path, capsys, quick_measure, mini_data_dir):
    from kdtune.engine.checkpoint import save_model
    from kdtune.engine.models import create_model

    path = tmp_path / "foreign.pt"
    save_model(path, create_model("tinycnn"), "tinycnn", {"val_acc": 0.9, "test_acc": 0.9, "data_key": "elsewhere"})
    data = ["--preset", "quick", "--teacher", "tinycnn", "--data-dir", str(mini_data_dir), "--train-subset", "200",
            "--val-size", "100"]
    code, _, err = tune_main(["--grid", "temperature", *data, "--teacher-path", str(path), "--dry-run"], capsys, tmp_path)
    assert code == 1 and "trained on data splits elsewhere" in err and "--allow-foreign-teacher" in err, err
    code, out, _ = tune_main(["--grid", "temperature", *data, "--teacher-path", str(path), "--allow-foreign-teacher",
                              "--dry-run"], capsys, tmp_path)
    assert code == 0 and f"from {path}" in out


def test_default_preset_fits_the_machine(tmp_path, capsys, monkeypatch):
    import torch

    from kdtune.sweep.presets import default_preset

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # Refused after the preset is chosen: its line comes first, and nothing is trained.
    code, out, err = tune_main(["--grid", "temperature", "--reduction-factor", "1"], capsys, tmp_path)
    assert code == 1 and "reduction-factor 1" in err
    assert out.splitlines()[0] == ("preset quick: no GPU is visible here: a smoke test, not an answer; --preset laptop "
                                   "for one on this CPU, paper for the full experiment (a GPU job)")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Mock GPU")
    assert default_preset() == ("paper", "a GPU is visible (Mock GPU); --preset quick for a few-minute smoke test")
    code, out, _ = tune_main(["--grid", "temperature", "--reduction-factor", "1"], capsys, tmp_path)
    assert code == 1 and out.startswith("preset paper: a GPU is visible (Mock GPU)")
