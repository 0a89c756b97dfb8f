"""The `kdtune` command: subcommands, one-line errors, the scripts as thin wrappers, and a real
non-editable install into a fresh virtual environment run from an unrelated folder."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from kdtune.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_kdtune(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.mark.parametrize(
    "argv, code, fragment",
    [
        ([], 2, "kdtune: error: the following arguments are required: COMMAND"),
        (["fit"], 2, "invalid choice: 'fit' (choose from 'train', 'tune', 'report')"),
        (["tune", "--grid", "nosuch"], 1, "error: unknown search space 'nosuch'"),
        (["tune", "--grid", "temperature", "--epochs", "0"], 2, "argument --epochs: invalid value '0'"),
        (["train", "--mode", "nosuch"], 2, "argument --mode: invalid choice: 'nosuch'"),
        (["report", str(REPO / "no-such-experiment")], 1, "is not a kdtune experiment"),
    ],
)
def test_errors_are_one_line(argv, code, fragment, capsys):
    status, _, err = run_kdtune(argv, capsys)
    assert status == code and err.count("\n") == 1 and fragment in err, err


def test_help_lists_the_subcommands(capsys):
    status, out, _ = run_kdtune(["--help"], capsys)
    assert status == 0 and all(name in out for name in ("train", "tune", "report"))


@pytest.mark.parametrize("script, command", [("main", "train"), ("tune", "tune"), ("report", "report")])
def test_scripts_run_the_same_commands(script, command):
    spec = importlib.util.spec_from_file_location(f"{script}_script", REPO / "scripts" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main is importlib.import_module(f"kdtune.cli.{command}").main


# ----------------------------------------------------------------------------- a real install


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """`pip install .` (not -e) of a copy of this checkout into a fresh venv; returns its bin/ folder.

    The venv sees this environment's packages through a .pth file, so torch and Ray are not downloaded
    again; --no-deps --no-build-isolation keep pip off the network.
    """
    base = tmp_path_factory.mktemp("install")
    source = base / "source"  # pip builds in the source tree: a copy keeps build/ out of the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("kdtune", "search_spaces"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "outer-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--ignore-installed",
                           "--no-cache-dir", "--disable-pip-version-check", str(source)],
                          capture_output=True, text=True, env=clean_env(), cwd=base)
    assert done.returncode == 0, done.stdout + done.stderr
    shutil.rmtree(source)  # the installed copy must not lean on the source
    return venv / "bin"


def clean_env() -> dict:
    """This environment minus anything that would import kdtune from a checkout instead of the install."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KDTUNE_SEARCH_SPACES")}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
def test_installed_command_from_an_unrelated_folder(installed, mini_data_dir, readme_experiment, tmp_path):
    where = subprocess.run([installed / "python", "-c", "import kdtune; print(kdtune.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=clean_env())
    assert where.stdout.startswith(str(installed.parent)), where.stdout + where.stderr
    done = subprocess.run([installed / "kdtune", "tune", "--grid", "temperature", "--preset", "quick", "--teacher",
                           "tinycnn", "--seeds", "1", "--data-dir", str(mini_data_dir), "--train-subset", "100",
                           "--val-size", "20", "--teacher-store", str(tmp_path / "teachers"), "--dry-run"],
                          capture_output=True, text=True, cwd=tmp_path, env=clean_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    # The built-in space, read from the installed package: its ten temperatures.
    assert "alpha=0.5, temperature=1 x 1 seeds" in done.stdout and "alpha=0.5, temperature=20 x 1 seeds" in done.stdout
    assert "total: 11 students in 11 Tune trials" in done.stdout and not (tmp_path / "teachers").exists()
    report = subprocess.run([installed / "kdtune", "report", str(readme_experiment), "--out", "report"],
                            capture_output=True, text=True, cwd=tmp_path, env=clean_env(), timeout=300)
    assert report.returncode == 0, report.stderr
    assert "T = 8, α = 0.5" in report.stdout and (tmp_path / "report" / "summary.md").read_text() in report.stdout
    assert sorted(p.name for p in (tmp_path / "report").glob("*.png")) == [
        "fidelity.png", "fidelity_calibration.png", "gain_analysis.png", "learning_curves.png", "teacher_card.png",
        "temperature_analysis.png"]


# ----------------------------------------------------------------------------- the one command run as a process


def test_a_refused_command_is_one_line_and_no_traceback_from_a_shell(tmp_path):
    """The one fast test that starts the command as a shell does (`python -m kdtune`, as the installed `kdtune`
    script runs kdtune.cli:main); every other refusal is checked in-process, through the same run_cli.
    What only a real process shows: nothing else on stderr (no warning at import, no Ray notice), and the
    exit code the interpreter returns."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    env.pop("KDTUNE_DATA_DIR", None)
    done = subprocess.run([sys.executable, "-m", "kdtune", "train", "--mode", "distill", "--teacher", "nosuchnet",
                           "--data-dir", str(tmp_path / "unused")], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: ") and "nosuchnet" in done.stderr and "resnet20" in done.stderr, done.stderr
    assert not (tmp_path / "unused").exists() and not (tmp_path / "results").exists()
