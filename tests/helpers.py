"""Test data shared by several test modules: learnable synthetic splits and linked subsets of real images."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from kdtune.engine.data import Splits, channel_stats

CLASSES = 10


def _learnable(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with one bright 8x8 square whose place on a 3x3 grid (or its absence) is the label."""
    labels = (torch.arange(n) % CLASSES)[torch.randperm(n, generator=g)]
    images = torch.randint(0, 100, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    for i, label in enumerate(labels.tolist()):
        if label < 9:
            r, c = 2 + 10 * (label // 3), 2 + 10 * (label % 3)
            images[i, :, r : r + 8, c : c + 8] = 255
    return images, labels


def synthetic_splits(n_train: int = 256, n_val: int = 64, n_test: int = 64, seed: int = 0) -> Splits:
    g = torch.Generator().manual_seed(seed)
    parts = [_learnable(n, g) for n in (n_train, n_val, n_test)]
    classes = tuple(f"c{i}" for i in range(CLASSES))
    mean, std = channel_stats(parts[0][0])
    return Splits(*parts[0], *parts[1], *parts[2], classes, key=f"synthetic-{seed}", mean=mean, std=std)


def link_image_subset(source: Path, root: Path, train_per_class: int, test_per_class: int) -> Path:
    """An image folder under `root` holding the first N real images of each class of `source`, as symlinks."""
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for class_dir in sorted((source / split).iterdir()):
            target = root / split / class_dir.name
            target.mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:per_class]:
                (target / image.name).symlink_to(image)
    return root


def write_shape_folder(root: Path, classes: int = 3, size: tuple[int, int] = (40, 40), train_per_class: int = 60,
                       test_per_class: int = 20, seed: int = 0) -> Path:
    """A learnable image folder of PNGs: noise, and a bright square whose place along the diagonal is the class."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    h, w = size
    side = min(h, w) // (classes + 1)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = torch.randint(0, 120, (h, w, 3), dtype=torch.uint8, generator=g)
                r, col = c * h // classes, c * w // classes
                image[r : r + side, col : col + side] = 255
                Image.fromarray(image.numpy()).save(folder / f"{i:03d}.png")
    return root


# Model builders named by `module:callable` specs in tests ("helpers:tiny_a"): the same architecture twice,
# so that only the spec tells them apart.
def tiny_a(num_classes: int) -> torch.nn.Module:
    from kdtune.engine.models import create_model

    return create_model("tinycnn", num_classes)


def tiny_b(num_classes: int) -> torch.nn.Module:
    from kdtune.engine.models import create_model

    return create_model("tinycnn", num_classes)


def wait_for(predicate, timeout: float) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` seconds pass (False)."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


# ----------------------------------------------------------------------------- commands run in this process


def run_command(main, argv: list[str], capture, cwd: Path, prog: str) -> subprocess.CompletedProcess:
    """A command's `main(argv)` run in this process as its script runs it (through `kdtune.cli.args.run_cli`),
    from `cwd`; returns what `subprocess.run` would: the exit code, stdout and stderr (read from `capture`,
    capsys or capfd).

    Python warnings go to stderr under Python's default filters, as a fresh interpreter would print them, so
    that "one line on stderr" means the same here as in a terminal.  An exception that run_cli lets through
    (a traceback, in a terminal) fails the test with that traceback.  sys.argv[0] (argparse's program name),
    sys.path and the modules imported from `cwd` (a user's `module:callable` model) are restored afterwards.
    """
    from kdtune.cli.args import run_cli

    capture.readouterr()  # only this command's output
    modules = set(sys.modules)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setattr(sys, "argv", [prog])
        mp.setattr(sys, "path", list(sys.path))
        try:
            with warnings.catch_warnings(record=True) as caught:
                _python_default_warning_filters()
                with pytest.raises(SystemExit) as exit_info:
                    run_cli(main, argv)
        finally:
            for name in set(sys.modules) - modules:
                where = getattr(sys.modules[name], "__file__", None) or ""
                if Path(where).resolve().is_relative_to(Path(cwd).resolve()):
                    del sys.modules[name]
    out, err = capture.readouterr()
    err += "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in caught)
    code = exit_info.value.code
    code = 0 if code is None else code if isinstance(code, int) else 1  # as the interpreter maps sys.exit(x)
    return subprocess.CompletedProcess([prog, *argv], code, out, err)


def _python_default_warning_filters() -> None:
    """The warning filters of a fresh `python script.py` (no -W, no PYTHONWARNINGS), not pytest's."""
    warnings.resetwarnings()
    warnings.simplefilter("default")
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.simplefilter("ignore", category)


def offline_env(monkeypatch, teacher_store: Path) -> None:
    """What the command-line tests give every run: no $KDTUNE_DATA_DIR, a teacher store of the test's own, and
    a proxy that refuses at once, so that a download attempt fails in an instant instead of reaching the network."""
    monkeypatch.delenv("KDTUNE_DATA_DIR", raising=False)
    monkeypatch.setenv("KDTUNE_TEACHER_STORE", str(teacher_store))
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
