"""The reliability suite: the hostile probes of issue 19, so that none can regress.

Here: names that would leave their folder, two starts with one name, a failed start that deletes only what
it made, truncated and zero-byte images.  Elsewhere, one file per layer: search spaces (repeated values and
keys, unknown keys, not UTF-8, oversized, alias bombs, YAML 1.2 numbers, `!!python` tags, malformed YAML,
long values) in tests/test_hostile_spaces.py; `kdtune train` outputs (overwrites, same-second names,
unwritable paths, failed final writes) in tests/test_hostile_train.py; data and stores (one class, empty
classes and splits, full disks, stale temporary files, control codes) in tests/test_hostile_data.py.  Probes
that held before have their tests beside the code they probe: mixed image sizes (test_data.py), pickled
and truncated checkpoints (test_checkpoint.py), a foreign teacher (test_teacher.py, test_report.py), a
damaged or half-written cache entry (test_teacher.py), a killed driver resumed (test_sweep.py), a damaged
record on --resume (test_resume.py)."""

from __future__ import annotations

import json

import pytest

from kdtune import api
from kdtune.cli.args import run_cli
from kdtune.cli.tune import main as tune_main
from kdtune.engine.errors import UsageError, UserError
from kdtune.sweep.resume import Claim
from kdtune.sweep.settings import default_name, experiment_root


@pytest.mark.parametrize("name", ["../escaped", "/abs/where", "a/b", "..", ".", "", "bad name", "x\x1b[31m"])
def test_a_name_is_one_folder_under_the_results_dir(name):
    with pytest.raises(UsageError, match="invalid experiment name"):
        experiment_root(name, "results")


@pytest.mark.parametrize("argv", [["--grid", "temperature"], ["--resume"]])
def test_the_command_refuses_an_escaping_name_before_any_work(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        run_cli(tune_main, [*argv, "--name", "../escaped", "--results-dir", str(tmp_path / "res")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "invalid experiment name '../escaped'" in err
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "res").exists()


def test_the_api_refuses_an_escaping_name(tmp_path):
    with pytest.raises(UserError, match="invalid experiment name"):
        api.sweep({"temperature": [2], "alpha": 0.5}, name="../escaped", results_dir=tmp_path / "res",
                  data_dir=tmp_path)
    assert not (tmp_path / "escaped").exists()


def test_a_default_name_is_a_valid_one_even_from_a_file_with_spaces(tmp_path):
    name = default_name("grid", str(tmp_path / "my space (v2).yaml"))
    assert experiment_root(name, tmp_path).parent == tmp_path and " " not in name


def test_of_two_starts_with_one_name_the_second_is_told_it_is_running(tmp_path):
    root = tmp_path / "results" / "same"
    first = Claim(root)
    with pytest.raises(UsageError, match="started by another kdtune a moment ago and is running") as refused:
        Claim(root)
    assert "--resume" not in str(refused.value)
    assert (root / "experiment.json").is_file()  # the loser touched nothing of the winner's
    (root / "sweep").mkdir()
    first.release()  # the winner, refused before any trial, removes what it made: the folder and its parents
    assert not (tmp_path / "results").exists()


def test_a_released_claim_in_a_folder_that_was_there_removes_only_its_record(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("the user's")
    Claim(root).release()
    assert (root / "notes.txt").read_text() == "the user's" and not (root / "experiment.json").exists()


def test_a_start_refused_after_its_claim_leaves_nothing_and_a_racing_winner_is_never_deleted(tmp_path, monkeypatch):
    """run_sweep claims the name first; a refusal later (here: no data) removes only what this start made."""
    import kdtune.sweep.runner as runner

    settings, resources = api.settings({"temperature": [2], "alpha": 0.5}, preset="paper", data_dir=tmp_path / "none",
                                       name="exp")
    root = tmp_path / "results" / "exp"
    with pytest.raises(UserError, match="not in"):
        runner.run_sweep(settings, resources, root)
    assert not (tmp_path / "results").exists()
    # The loser of a race: the winner's record is there first, and stays, whatever the loser meets.
    root.mkdir(parents=True)
    winner = {"status": "running", "settings": {"space": {}}, "storage": str(root)}
    (root / "experiment.json").write_text(json.dumps(winner))
    with pytest.raises(UsageError, match="is running"):
        runner.run_sweep(settings, resources, root)
    assert json.loads((root / "experiment.json").read_text()) == winner


@pytest.mark.parametrize("damage", ["truncated", "zero bytes"])
def test_a_truncated_or_empty_jpeg_is_named_in_one_line(tmp_path, damage):
    from PIL import Image

    from kdtune.engine.data import load_dataset

    root = tmp_path / "images"
    for split in ("train", "test"):
        for name in ("ant", "bee"):
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (40 * i, 80, 120)).save(root / split / name / f"{i}.jpg", quality=95)
    bad = root / "train" / "bee" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2] if damage == "truncated" else b"")
    with pytest.raises(UserError) as refused:
        load_dataset(root)
    message = str(refused.value)
    assert str(bad) in message and len(message.splitlines()) == 1
