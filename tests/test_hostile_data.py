"""Hostile data and storage (issue 19): one-class data, classes the splits leave empty, full disks, leftovers of
killed writes, and library messages with terminal control codes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import offline_env, run_command, synthetic_splits, write_shape_folder

import kdtune.engine.atomic as atomic
import kdtune.engine.data as data
import kdtune.engine.teacher as teacher_mod
from kdtune.cli.train import main as train_main
from kdtune.engine.checkpoint import load_model
from kdtune.engine.config import RunConfig
from kdtune.engine.data import Dataset, load_dataset, make_splits
from kdtune.engine.errors import UserError, first_line
from kdtune.engine.teacher import kept_path, obtain_teacher, store_entry, teacher_logits

CPU = torch.device("cpu")
TEACHER = RunConfig(model="tinycnn", epochs=1, batch_size=64)
REAL_SAVE = torch.save
FULL = "PytorchStreamWriter failed writing file data/0: file write failed"  # what torch.save says on a full disk

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A decode cache of the test's own, so that a cache hit or miss is the test's doing."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("KDTUNE_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def temp_dir(tmp_path, monkeypatch) -> Path:
    """The system temporary folder, where a teacher that cannot be stored is kept: the test's own."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(folder))
    return folder


def _fail_saves_under(monkeypatch, folder: Path, error: Exception, allow: int = 0) -> None:
    """torch.save fails with `error` (as on a full disk) for files under `folder`, after `allow` successes."""
    done = []

    def save(obj, f, *args, **kwargs):
        if Path(f).is_relative_to(folder):
            if len(done) >= allow:
                raise error
            done.append(f)
        return REAL_SAVE(obj, f, *args, **kwargs)

    monkeypatch.setattr(atomic.torch, "save", save)


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def _dataset(counts: list[int]) -> Dataset:
    """A hand-made dataset with `counts[c]` training images of class c (and one test image of each)."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    images = torch.zeros(len(labels), 3, 8, 8, dtype=torch.uint8)
    test = torch.zeros(len(counts), 3, 8, 8, dtype=torch.uint8)
    classes = tuple(f"c{i}" for i in range(len(counts)))
    return Dataset(images, labels, test, torch.arange(len(counts)), classes, "fp", (0.5,) * 3, (0.25,) * 3)


# ----------------------------------------------------------------------------- classes


def test_one_class_folder_is_refused_fresh_and_from_the_cache(tmp_path, cache, monkeypatch):
    root = write_shape_folder(tmp_path / "one", classes=1, train_per_class=4, test_per_class=2)
    with pytest.raises(UserError, match=r"1 class \(class0\).*at least two"):
        load_dataset(root)
    # A decode cache written before the check existed is refused too, without decoding again.
    monkeypatch.setattr(data, "check_classes", lambda dataset, source="": dataset)
    load_dataset(root)
    monkeypatch.undo()
    monkeypatch.setenv("KDTUNE_CACHE_DIR", str(cache))
    monkeypatch.setattr(data, "_decode_image_folder", lambda *a: pytest.fail("decoded again instead of the cache"))
    with pytest.raises(UserError, match=r"1 class \(class0\)"):
        load_dataset(root)


def test_one_class_dataset_is_refused_by_make_splits():
    with pytest.raises(UserError, match=r"1 class \(c0\)"):
        make_splits(_dataset([50]), val_size=10)


@pytest.mark.parametrize("split", ["train", "test"])
def test_class_folder_without_images_is_named(tmp_path, cache, split):
    root = write_shape_folder(tmp_path / "data", classes=3, train_per_class=4, test_per_class=2)
    for image in (root / split / "class1").iterdir():
        image.unlink()
    (root / split / "class1" / "notes.txt").write_text("not an image\n")
    with pytest.raises(UserError) as info:
        load_dataset(root)
    assert str(root / split / "class1") in _one_line(str(info.value)) and "holds no images" in str(info.value)


@pytest.mark.parametrize("counts, sizes, needles", [
    ([100, 2], {"val_size": 10}, ["'c1' gets no validation images", "--val-size to 51 or more"]),
    ([100, 1], {"val_size": 60}, ["'c1' keeps no training images", "lower --val-size"]),
    ([100, 20], {"val_size": 12, "train_subset": 2}, ["'c1' gets no images in --train-subset 2",
                                                      "--train-subset to 6 or more"]),
])
def test_split_leaving_a_class_empty_is_refused(counts, sizes, needles):
    with pytest.raises(UserError) as info:
        make_splits(_dataset(counts), **sizes)
    for needle in needles:
        assert needle in _one_line(str(info.value))


def test_train_on_one_class_folder_is_one_line(tmp_path, monkeypatch, capfd, cache):
    root = write_shape_folder(tmp_path / "airplanes", classes=1, train_per_class=6, test_per_class=2)
    offline_env(monkeypatch, tmp_path / "teachers")
    args = ["--mode", "distill", "--teacher", "tinycnn", "--student", "tinycnn", "--epochs", "1", "--no-progress",
            "--data-dir", str(root), "--val-size", "2"]
    result = run_command(train_main, args, capfd, tmp_path, prog="main.py")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "1 class (class0)" in _one_line(result.stderr) and "100.00%" not in result.stdout


# ----------------------------------------------------------------------------- full disks


@pytest.mark.parametrize("error", [RuntimeError(FULL), OSError(errno.ENOSPC, "No space left on device")])
def test_dataset_cache_write_failure_is_a_note(tmp_path, cache, monkeypatch, capsys, error):
    root = write_shape_folder(tmp_path / "data", classes=2, train_per_class=4, test_per_class=2)
    _fail_saves_under(monkeypatch, cache, error)
    dataset = load_dataset(root)
    assert len(dataset.train_labels) == 8
    note = _one_line(capsys.readouterr().err)
    assert note.startswith("note:") and str(cache) in note and "decodes it again" in note
    assert list(cache.iterdir()) == []  # no half-written cache or temporary file


@pytest.mark.parametrize("error", [RuntimeError(FULL), OSError(errno.ENOSPC, "No space left on device")])
def test_full_store_keeps_the_teacher_and_the_next_run_stores_it(tmp_path, temp_dir, monkeypatch, error):
    splits, store = synthetic_splits(), tmp_path / "store"
    _fail_saves_under(monkeypatch, store, error)
    with pytest.raises(UserError) as info:
        obtain_teacher(TEACHER, splits, CPU, store=store)
    kept = kept_path(TEACHER, splits)
    line = _one_line(str(info.value))
    assert str(store_entry(TEACHER, splits, store)) in line and f"kept at {kept}" in line
    assert f"--teacher-path {kept}" in line and kept.is_relative_to(temp_dir)
    model, meta = load_model(kept, expected_arch="tinycnn", num_classes=splits.num_classes)
    assert meta["data_key"] == splits.key
    assert [p.name for p in store.iterdir()] == []  # no half-built entry

    # --teacher-path continues with it, untrained again...
    monkeypatch.setattr(teacher_mod, "train_teacher", lambda *a, **k: pytest.fail("the teacher was trained again"))
    assert obtain_teacher(TEACHER, splits, CPU, teacher_path=kept).path == kept
    # ...and once there is space, the next run stores it from there.
    monkeypatch.setattr(atomic.torch, "save", REAL_SAVE)
    stored = obtain_teacher(TEACHER, splits, CPU, store=store)
    assert stored.path == store_entry(TEACHER, splits, store) / "model.pt" and not kept.exists()
    kept_state, stored_state = model.state_dict(), stored.model.state_dict()
    assert all(torch.equal(kept_state[k], stored_state[k]) for k in kept_state)


def test_no_room_anywhere_for_the_teacher_is_one_line(tmp_path, temp_dir, monkeypatch):
    splits, store = synthetic_splits(), tmp_path / "store"
    _fail_saves_under(monkeypatch, tmp_path, RuntimeError(FULL))
    with pytest.raises(UserError) as info:
        obtain_teacher(TEACHER, splits, CPU, store=store)
    line = _one_line(str(info.value))
    assert f"nor to {kept_path(TEACHER, splits)}" in line and "file write failed" in line


def test_full_logit_cache_is_one_line_and_a_rerun_computes_only_the_rest(tmp_path, monkeypatch):
    splits, store = synthetic_splits(), tmp_path / "store"
    teacher = obtain_teacher(TEACHER, splits, CPU, store=store)
    folder = store_entry(TEACHER, splits, store) / "model-logits"
    _fail_saves_under(monkeypatch, folder, RuntimeError(FULL), allow=3)  # val, test and epoch 0 fit
    with pytest.raises(UserError) as info:
        teacher_logits(teacher, splits, aug_seed=0, epochs=3, device=CPU)
    (cache,) = folder.iterdir()
    line = _one_line(str(info.value))
    assert str(cache) in line and "computes only the missing" in line
    assert sorted(p.name for p in cache.iterdir()) == ["epoch-0000.pt", "test.pt", "val.pt"]

    monkeypatch.setattr(atomic.torch, "save", REAL_SAVE)
    computed = []
    real = teacher_mod.epoch_logits
    monkeypatch.setattr(teacher_mod, "epoch_logits", lambda model, s, seed, epoch, *a: computed.append(epoch) or
                        real(model, s, seed, epoch, *a))
    assert teacher_logits(teacher, splits, aug_seed=0, epochs=3, device=CPU).train.shape[0] == 3
    assert computed == [1, 2]


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 64 KiB file system (tmpfs): needs root and mount, else the test is skipped."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs: {done.stderr.strip() or done.returncode}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.skipif(sys.platform != "linux", reason="tmpfs is Linux's")
def test_a_really_full_disk(tmp_path, tiny_disk, monkeypatch, capsys, temp_dir):
    root = write_shape_folder(tmp_path / "data", classes=2, train_per_class=30, test_per_class=10)  # ~300 KB
    monkeypatch.setenv("KDTUNE_CACHE_DIR", str(tiny_disk / "cache"))
    assert len(load_dataset(root).train_labels) == 60
    assert str(tiny_disk / "cache") in _one_line(capsys.readouterr().err)
    assert list((tiny_disk / "cache").iterdir()) == []

    splits = synthetic_splits()  # its teacher, some 140 KB, does not fit either
    with pytest.raises(UserError) as info:
        obtain_teacher(TEACHER, splits, CPU, store=tiny_disk / "store")
    assert f"kept at {kept_path(TEACHER, splits)}" in _one_line(str(info.value))
    load_model(kept_path(TEACHER, splits), expected_arch="tinycnn")


# ----------------------------------------------------------------------------- leftovers of killed writes


def _age(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def _leftovers(folder: Path) -> tuple[Path, Path, Path]:
    """A stale temporary file, a stale temporary folder and a young temporary file (a writer at work) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".entry.abc.tmp").mkdir()
    (folder / ".entry.abc.tmp" / "model.pt").write_bytes(b"half")
    stale_dir = _age(folder / ".entry.abc.tmp", 2 * atomic.STALE_AFTER_S)
    stale = folder / ".x.pt.k3j1.tmp"
    stale.write_bytes(b"half")
    young = folder / ".y.pt.q9z2.tmp"
    young.write_bytes(b"being written")
    return _age(stale, 2 * atomic.STALE_AFTER_S), stale_dir, young


def test_stale_temporary_files_go_at_the_next_write(tmp_path):
    stale, stale_dir, young = _leftovers(tmp_path / "runs")
    (tmp_path / "runs" / "old.json").write_text("{}\n")
    old_result = _age(tmp_path / "runs" / "old.json", 10 * atomic.STALE_AFTER_S)  # not a temporary file: kept
    atomic.save_json(tmp_path / "runs" / "new.json", {"a": 1})
    assert not stale.exists() and not stale_dir.exists()
    assert young.exists() and old_result.exists() and (tmp_path / "runs" / "new.json").exists()


def test_stale_temporary_files_go_when_the_store_and_caches_are_opened(tmp_path, cache, monkeypatch):
    root = write_shape_folder(tmp_path / "data", classes=2, train_per_class=4, test_per_class=2)
    load_dataset(root)  # cached: the next load writes nothing
    in_cache = _leftovers(cache)
    load_dataset(root)
    assert [p.exists() for p in in_cache] == [False, False, True]

    splits, store = synthetic_splits(), tmp_path / "store"
    teacher = obtain_teacher(TEACHER, splits, CPU, store=store)
    teacher_logits(teacher, splits, aug_seed=0, epochs=1, device=CPU)
    in_store = _leftovers(store)
    (logits,) = (store_entry(TEACHER, splits, store) / "model-logits").iterdir()
    in_logits = _leftovers(logits)
    teacher_logits(obtain_teacher(TEACHER, splits, CPU, store=store), splits, aug_seed=0, epochs=1, device=CPU)
    assert [p.exists() for p in in_store + in_logits] == [False, False, True] * 2


# ----------------------------------------------------------------------------- control codes in messages


def test_first_line_strips_control_codes():
    error = RuntimeError("Weights only load failed. \x1b[1mDo this\x1b[0m only if \x1b]0;title\x07you trust it.\t\x07\n"
                         "\t(1) details")
    assert first_line(error) == "Weights only load failed. Do this only if you trust it."
    assert "\x1b" not in first_line(RuntimeError("\x1b[31mred\x1b[0m\r\nsecond")) == "red"
    assert first_line(RuntimeError("\n\n  ")) == "RuntimeError"


def test_first_line_cuts_at_a_sentence_or_a_word_within_the_limit():
    words = "\x1b[31m" + "word " * 100 + "\x1b[0m"
    cut = first_line(RuntimeError(words), limit=50)
    assert len(cut) <= 50 and cut.endswith("word…") and "\x1b" not in cut
    sentences = first_line(RuntimeError("A first sentence that says enough. " + "more " * 40), limit=50)
    assert sentences == "A first sentence that says enough. …"
    assert len(first_line(RuntimeError("x" * 500), limit=50)) == 50


def test_user_error_never_carries_control_codes(tmp_path, cache):
    root = write_shape_folder(tmp_path / "data", classes=2, train_per_class=2, test_per_class=1)
    hostile = root / "test" / "\x1b[2Jevil"
    hostile.mkdir()
    (root / "train" / "\x1b[2Jevil").mkdir()
    with pytest.raises(UserError) as info:
        load_dataset(root)
    message = str(info.value)
    assert "\x1b" not in message and "holds no images" in message and "evil" in message
