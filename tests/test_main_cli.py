"""scripts/main.py (`kdtune train`) as a user runs it: one-line errors with the right exit code, user models and
data, and one real end-to-end run.

The command's main() runs in this process, through run_cli as the script runs it (helpers.run_command);
test_commands.py starts the one real process that checks the same contract from a shell.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import link_image_subset, offline_env, run_command

from kdtune.cli.train import main as train_main
from kdtune.engine.checkpoint import save_model
from kdtune.engine.models import create_model

# fp32 named: what --precision auto measures is tested in test_precision.py, not once per model here.
QUICK = ["--mode", "distill", "--teacher", "tinycnn", "--student", "tinycnn", "--epochs", "1", "--no-progress",
         "--precision", "fp32"]


@pytest.fixture
def run_main(tmp_path, monkeypatch, capfd, one_thread):
    """run_main(args) -> CompletedProcess: scripts/main.py ARGS from tmp_path, offline, with its own teacher store.

    capfd rather than capsys: what native code or a logger bound to the real stderr prints counts too.
    """
    offline_env(monkeypatch, tmp_path / "teachers")
    return lambda args: run_command(train_main, args, capfd, tmp_path, prog="main.py")


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------- bad flags (no data needed)


@pytest.mark.parametrize(
    "flags, code, needles",
    [
        (["--temperature", "0"], 2, ["--temperature", "'0'"]),
        (["--temperature", "-1"], 2, ["--temperature", "'-1'"]),
        (["--temperature", "abc"], 2, ["--temperature", "'abc'"]),
        (["--alpha", "1.5"], 2, ["--alpha", "'1.5'"]),
        (["--alpha", "-0.1"], 2, ["--alpha", "'-0.1'"]),
        (["--alpha", "nan"], 2, ["--alpha", "'nan'"]),
        (["--epochs", "0"], 2, ["--epochs", "'0'"]),
        (["--epochs", "2.5"], 2, ["--epochs", "'2.5'"]),
        (["--batch-size", "0"], 2, ["--batch-size", "'0'"]),
        (["--precision", "fp16"], 2, ["--precision", "fp16"]),
        (["--teacher", "nosuchnet"], 1, ["nosuchnet", "resnet20"]),
        (["--student", "nosuchnet"], 1, ["nosuchnet", "tinycnn"]),
        (["--student", "no_such_module_xyz:build"], 1, ["'no_such_module_xyz:build'", "no module named"]),
        (["--teacher", "torchvision:nosuchnet"], 1, ["'torchvision:nosuchnet'", "torchvision has no"]),
        (["--teacher", "kdtune.engine.models:nosuch"], 1, ["'kdtune.engine.models:nosuch'", "has no attribute"]),
        (["--dataset", "mnist"], 2, ["--dataset", "mnist"]),
        (["--image-size", "0"], 2, ["--image-size", "'0'"]),
        (["--recipe", "nosuch"], 1, ["nosuch", "strong"]),
        (["--device", "nonsense"], 1, ["nonsense"]),
    ],
)
def test_bad_flag(tmp_path, run_main, flags, code, needles):
    result = run_main(["--mode", "distill", "--data-dir", str(tmp_path / "unused"), *flags])
    assert_one_line_error(result, code, *needles)
    assert not (tmp_path / "unused").exists() and not (tmp_path / "results").exists()


def test_missing_mode(run_main):
    assert_one_line_error(run_main(["--epochs", "1"]), 2, "--mode")


def test_missing_data_dir_offline(tmp_path, run_main):
    missing = tmp_path / "nonexistent"
    result = run_main([*QUICK, "--data-dir", str(missing)])
    assert_one_line_error(result, 1, str(missing), "--data-dir")


# ----------------------------------------------------------------------------- bad values that need the data
# (a small folder of PNGs: these runs are refused before any training, whatever the images)


def _image_folder(root: Path, classes: dict[str, list[str]]) -> Path:
    """{split/class: [file names]}; .png names get a real 32x32 image, anything else garbage bytes."""
    import numpy as np
    from PIL import Image

    for folder, names in classes.items():
        (root / folder).mkdir(parents=True)
        for name in names:
            if name.endswith(".png"):
                Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8)).save(root / folder / name)
            else:
                (root / folder / name).write_bytes(b"not an image")
    return root


def test_data_folder_with_a_missing_class(tmp_path, run_main):
    data = _image_folder(tmp_path / "data", {"train/cat": ["0.png"], "train/dog": ["0.png"], "test/cat": ["0.png"]})
    assert_one_line_error(run_main([*QUICK, "--data-dir", str(data)]), 1, "dog", "train and test classes")


def test_data_folder_with_an_unreadable_image(tmp_path, run_main):
    data = _image_folder(tmp_path / "data", {"train/cat": ["0.png", "1.jpg"], "test/cat": ["0.png"]})
    assert_one_line_error(run_main([*QUICK, "--data-dir", str(data)]), 1, "cannot read image", "1.jpg")


def test_train_subset_larger_than_data(run_main, three_class_dir):
    result = run_main([*QUICK, "--data-dir", str(three_class_dir), "--val-size", "30", "--train-subset", "100000"])
    assert_one_line_error(result, 1, "train_subset", "100000")


def test_val_size_larger_than_data(run_main, three_class_dir):
    result = run_main([*QUICK, "--data-dir", str(three_class_dir), "--val-size", "60000"])
    assert_one_line_error(result, 1, "val_size", "60000")


def test_teacher_path_to_a_text_file(tmp_path, run_main, three_class_dir):
    text = tmp_path / "teacher.pt"
    text.write_text("not a model\n")
    result = run_main([*QUICK, "--data-dir", str(three_class_dir), "--val-size", "30", "--teacher-path", str(text)])
    assert_one_line_error(result, 1, str(text))
    assert text.read_text() == "not a model\n"


def test_teacher_path_to_another_architecture(tmp_path, run_main, three_class_dir):
    other = save_model(tmp_path / "tiny.pt", create_model("tinycnn", 3), "tinycnn", {})
    args = [*QUICK, "--teacher", "resnet20", "--data-dir", str(three_class_dir), "--val-size", "30",
            "--teacher-path", str(other)]
    assert_one_line_error(run_main(args), 1, str(other), "tinycnn", "resnet20")


# ----------------------------------------------------------------------------- your own models and data

USER_MODELS = """
from torch import nn

def small_cnn(num_classes):
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )

def not_a_model(num_classes):
    return "a string"
"""


def test_torchvision_teacher_distils_into_a_module_callable_student(tmp_path, run_main, three_class_dir):
    """3 classes of 40x40 images; the student's module is found in the current directory, as Ray's workers find it."""
    (tmp_path / "usermodels.py").write_text(USER_MODELS)
    store, output = tmp_path / "store", tmp_path / "run.json"
    args = ["--mode", "distill", "--teacher", "torchvision:resnet18", "--student", "usermodels:small_cnn",
            "--epochs", "2", "--val-size", "30", "--batch-size", "50", "--data-dir", str(three_class_dir),
            "--teacher-store", str(store), "--output", str(output), "--no-progress", "--precision", "fp32"]
    done = run_main(args)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(output.read_text())
    assert summary["data"]["classes"] == 3 and summary["data"]["image_size"] == [40, 40]
    assert summary["data"]["train"] == 150 and summary["data"]["val"] == 30 and summary["data"]["test"] == 60
    assert summary["data"]["mean"] != [0.4914, 0.4822, 0.4465] and min(summary["data"]["std"]) > 0
    assert summary["teacher"]["config"]["model"] == "torchvision:resnet18" and summary["teacher"]["num_classes"] == 3
    assert summary["config"]["model"] == "usermodels:small_cnn"
    assert [h["epoch"] for h in summary["history"]] == [1, 2] and all(h["train_kd"] > 0 for h in summary["history"])
    (entry,) = [p for p in store.iterdir() if not p.name.startswith(".")]
    assert entry.name.startswith("torchvision_resnet18-")
    cached = [torch.load(p, weights_only=True) for p in entry.rglob("epoch-*.pt")]
    assert [c.shape for c in cached] == [(150, 3), (150, 3)]  # one row of 3 class logits per training image
    student = torch.load(output.with_suffix(".pt"), weights_only=True)
    assert student["arch"] == "usermodels:small_cnn" and student["num_classes"] == 3


def test_a_callable_that_is_no_model_fails_before_training(tmp_path, run_main, three_class_dir):
    (tmp_path / "usermodels.py").write_text(USER_MODELS)
    args = ["--mode", "student", "--student", "usermodels:not_a_model", "--epochs", "1", "--val-size", "30",
            "--data-dir", str(three_class_dir), "--output", str(tmp_path / "run.json"), "--no-progress"]
    result = run_main(args)
    assert_one_line_error(result, 1, "'usermodels:not_a_model'", "returned str, not a torch.nn.Module")
    assert not (tmp_path / "run.json").exists()


def test_timm_student_on_three_classes(tmp_path, run_main, three_class_dir):
    pytest.importorskip("timm", reason="timm is not installed (pip install 'kdtune[timm]')")
    output = tmp_path / "run.json"
    args = ["--mode", "student", "--student", "timm:test_resnet", "--epochs", "1", "--val-size", "30",
            "--image-size", "32", "--data-dir", str(three_class_dir), "--output", str(output), "--no-progress"]
    done = run_main(args)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(output.read_text())
    assert summary["config"]["model"] == "timm:test_resnet" and summary["data"]["image_size"] == [32, 32]
    assert 0 <= summary["final"]["val_acc"] <= 1


# ----------------------------------------------------------------------------- end to end on real images


@pytest.fixture(scope="module")
def real_subset(real_data_dir, tmp_path_factory) -> Path:
    """Real CIFAR-10 JPEGs, 300 train and 100 test per class (symlinks).

    The whole folder's 10,000-image test set would be evaluated by the teacher every epoch and cached:
    more than a minute on two CPU cores, whatever --train-subset is.
    """
    return link_image_subset(real_data_dir, tmp_path_factory.mktemp("cifar10-subset"), 300, 100)


@pytest.mark.slow
def test_distill_end_to_end_on_real_images(tmp_path, run_main, real_subset):
    store = tmp_path / "store"
    output = tmp_path / "run.json"
    args = ["--mode", "distill", "--teacher", "resnet20", "--student", "tinycnn", "--epochs", "2",
            "--train-subset", "2000", "--val-size", "1000", "--data-dir", str(real_subset),
            "--teacher-store", str(store), "--output", str(output), "--no-progress"]
    first = run_main(args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Traceback" not in first.stderr

    summary = json.loads(output.read_text())
    assert summary["mode"] == "distill"
    assert summary["data"]["train"] == 2000 and summary["data"]["val"] == 1000 and summary["data"]["test"] == 1000
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert all(h["train_kd"] > 0 and 0 <= h["agreement"] <= 1 for h in summary["history"])
    assert summary["config"]["alpha"] == 0.3 and summary["config"]["temperature"] == 4.0
    assert summary["teacher"]["config"]["model"] == "resnet20" and summary["teacher"]["config"]["epochs"] == 2
    # Chance is 0.1.
    assert summary["teacher"]["val_acc"] > 0.2 and summary["teacher"]["test_acc"] > 0.2, summary["teacher"]
    assert summary["final"]["val_acc"] > 0.2 and summary["final"]["test_acc"] > 0.2, summary["final"]
    assert output.with_suffix(".png").stat().st_size > 0
    student = torch.load(output.with_suffix(".pt"), weights_only=True)
    assert student["arch"] == "tinycnn"
    teacher_path = Path(summary["teacher"]["path"])
    assert teacher_path.is_file() and teacher_path.is_relative_to(store)
    entries = [p for p in store.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and [p.name for p in store.iterdir()] == [entries[0].name]  # no leftover temp folders
    teacher_line = next(line for line in first.stdout.splitlines() if line.startswith("teacher resnet20"))

    # A second run reuses the stored teacher (and its logit cache) instead of training another.
    files = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    assert len([p for p in files if p.name.startswith("epoch-")]) == 2  # the logit cache: one file per epoch
    second_args = [*args]
    second_args[second_args.index("--output") + 1] = str(tmp_path / "run2.json")
    second = run_main(second_args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert teacher_line in second.stdout.splitlines()  # same accuracies, same path
    assert [p.name for p in store.iterdir()] == [entries[0].name]
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()} == files  # nothing rewritten
    again = json.loads((tmp_path / "run2.json").read_text())
    assert len(again["history"]) == 2
    if summary["device"] != "cpu":
        return  # CUDA kernels need not be bitwise reproducible; on CPU the student is, from the cached logits
    assert again["history"] == [
        {**h, "epoch_s": again["history"][i]["epoch_s"], "images_per_s": again["history"][i]["images_per_s"]}
        for i, h in enumerate(summary["history"])
    ]
