"""The teacher store and the teacher-logit cache: exactness against a live teacher, reuse, damage, increments."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from helpers import synthetic_splits

import kdtune.engine.teacher as teacher_mod
from kdtune.engine.checkpoint import save_model
from kdtune.engine.config import RunConfig
from kdtune.engine.data import Splits, augment, augmentation_params, normalize
from kdtune.engine.errors import UserError
from kdtune.engine.models import create_model
from kdtune.engine.teacher import (
    CachedTeacher,
    heavy_part_from_state,
    model_from_state,
    obtain_teacher,
    prepare_teacher,
    teacher_key,
    teacher_logits,
)
from kdtune.engine.train import LiveTeacher, predict, train

CPU = torch.device("cpu")
TEACHER = RunConfig(model="tinycnn", epochs=1, batch_size=64)
STUDENT = RunConfig(model="tinycnn", epochs=2, alpha=0.5, temperature=4.0, seed=1, batch_size=64)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def splits() -> Splits:
    return synthetic_splits()


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def counted(monkeypatch):
    """Record the epochs that kdtune.engine.teacher computes with the teacher network, and its predict() calls."""
    calls = {"epochs": [], "predict": 0}
    real_epoch_logits, real_predict = teacher_mod.epoch_logits, teacher_mod.predict

    def epoch_logits(model, splits, aug_seed, epoch, device, precision):
        calls["epochs"].append(epoch)
        return real_epoch_logits(model, splits, aug_seed, epoch, device, precision)

    def predict_(*args, **kwargs):
        calls["predict"] += 1
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(teacher_mod, "epoch_logits", epoch_logits)
    monkeypatch.setattr(teacher_mod, "predict", predict_)
    return calls


def _entries(store: Path) -> list[str]:
    return sorted(p.name for p in store.iterdir() if not p.name.startswith("."))


def _live_views_logits(model, splits: Splits, aug_seed: int, epoch: int) -> torch.Tensor:
    """The teacher run directly on the views kdtune.engine.train draws in `epoch` (one image at a time, no batching)."""
    params = augmentation_params(len(splits.train_labels), aug_seed, epoch, splits.image_size)
    model = model.eval()
    with torch.no_grad():
        return torch.cat([model(normalize(augment(splits.train_images[i : i + 1], params[i : i + 1]), splits.mean,
                                          splits.std))
                          for i in range(len(splits.train_labels))])


# ----------------------------------------------------------------------------- exactness


def test_cached_teacher_reproduces_live_teacher(splits, store):
    teacher = obtain_teacher(TEACHER, splits, CPU, store=store)
    assert teacher.path == store / f"tinycnn-{teacher_key(TEACHER, splits)}" / "model.pt"
    assert teacher.path.is_file() and (teacher.path.parent / "meta.json").is_file()

    cache = teacher_logits(teacher, splits, aug_seed=0, epochs=2, device=CPU)
    assert cache.train.shape == (2, 256, 10) and cache.train.dtype == torch.float16
    assert cache.val.shape == (64, 10) and cache.test.shape == (64, 10)

    # Each epoch's row is the teacher on that epoch's views, and the epochs' views differ.
    for epoch in range(2):
        live = _live_views_logits(teacher.model, splits, aug_seed=0, epoch=epoch)
        torch.testing.assert_close(cache.train[epoch].float(), live, rtol=2e-3, atol=2e-3)
    assert (cache.train[0].float() - cache.train[1].float()).abs().max() > 0.05
    torch.testing.assert_close(cache.val.float(), predict(teacher.model, splits.val_images, splits, CPU, "fp32"),
                               rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(cache.test.float(), predict(teacher.model, splits.test_images, splits, CPU, "fp32"),
                               rtol=2e-3, atol=2e-3)

    # A distilled student trains the same with the live teacher and with the cache.
    live_run = train(STUDENT, splits, CPU, teacher=LiveTeacher(teacher.model, splits, CPU, "auto"))
    cached_run = train(STUDENT, splits, CPU, teacher=CachedTeacher(cache, splits, CPU))
    assert len(live_run.history) == len(cached_run.history) == 2
    for live, cached in zip(live_run.history, cached_run.history):
        assert cached["train_kd"] > 0
        assert cached["train_loss"] == pytest.approx(live["train_loss"], rel=1e-3)
        assert cached["train_kd"] == pytest.approx(live["train_kd"], rel=1e-3)
        assert cached["train_ce"] == pytest.approx(live["train_ce"], rel=1e-3)
        assert cached["agreement"] == pytest.approx(live["agreement"], abs=0.02)
    assert cached_run.final["val_acc"] == pytest.approx(live_run.final["val_acc"], abs=0.02)


def test_cache_for_another_aug_seed_differs(splits, store):
    teacher = obtain_teacher(TEACHER, splits, CPU, store=store)
    a = teacher_logits(teacher, splits, aug_seed=0, epochs=1, device=CPU)
    b = teacher_logits(teacher, splits, aug_seed=1, epochs=1, device=CPU)
    assert not torch.equal(a.train, b.train)
    assert torch.equal(a.val, b.val)  # un-augmented


# ----------------------------------------------------------------------------- the store


def test_store_reuses_a_trained_teacher(splits, store, monkeypatch):
    first = obtain_teacher(TEACHER, splits, CPU, store=store)
    monkeypatch.setattr(teacher_mod, "train", lambda *a, **k: pytest.fail("trained a teacher that is in the store"))
    second = obtain_teacher(TEACHER, splits, CPU, store=store)
    assert second.path == first.path
    assert second.meta["val_acc"] == first.meta["val_acc"] and second.meta["config"] == TEACHER.to_dict()
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    # T and alpha do not decide a teacher's weights: the same entry serves any of them.
    other_kd = RunConfig(model="tinycnn", epochs=1, batch_size=64, temperature=9.0, alpha=0.7)
    assert obtain_teacher(other_kd, splits, CPU, store=store).path == first.path
    assert _entries(store) == [first.path.parent.name]


@pytest.mark.parametrize("change", [{"epochs": 2}, {"seed": 1}, {"recipe": "strong"}, {"lr": 0.01}])
def test_other_config_gets_another_entry(splits, store, change):
    other = RunConfig(**{**TEACHER.to_dict(), **change})
    assert teacher_key(other, splits) != teacher_key(TEACHER, splits)
    a = obtain_teacher(TEACHER, splits, CPU, store=store)
    b = obtain_teacher(other, splits, CPU, store=store)
    assert a.path != b.path and len(_entries(store)) == 2
    assert b.meta["config"] == other.to_dict()


def test_other_splits_get_another_key(splits):
    assert teacher_key(TEACHER, splits) != teacher_key(TEACHER, synthetic_splits(seed=1))


def test_two_module_callable_teachers_never_share_an_entry(splits, store):
    """helpers:tiny_a and helpers:tiny_b build the same architecture: only the spec tells them apart."""
    a_config = RunConfig(**{**TEACHER.to_dict(), "model": "helpers:tiny_a"})
    b_config = RunConfig(**{**TEACHER.to_dict(), "model": "helpers:tiny_b"})
    assert teacher_key(a_config, splits) != teacher_key(b_config, splits)
    a = obtain_teacher(a_config, splits, CPU, store=store)
    b = obtain_teacher(b_config, splits, CPU, store=store)
    assert a.path != b.path
    assert [name.rsplit("-", 1)[0] for name in _entries(store)] == ["helpers_tiny_a", "helpers_tiny_b"]
    assert obtain_teacher(a_config, splits, CPU, store=store).path == a.path  # and each is found again
    assert b.meta["config"]["model"] == "helpers:tiny_b" and b.meta["num_classes"] == 10


def test_teacher_of_another_class_count_is_refused(splits, tmp_path):
    path = tmp_path / "three-class.pt"
    save_model(path, create_model("tinycnn", 3), "tinycnn", {"val_acc": 0.0, "test_acc": 0.0}, num_classes=3)
    with pytest.raises(UserError, match="3-class model, but the data have 10 classes"):
        obtain_teacher(TEACHER, splits, CPU, teacher_path=path)


def _count_trainings(monkeypatch) -> list:
    trained = []
    real_train = teacher_mod.train

    def counting(*args, **kwargs):
        trained.append(args[0])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(teacher_mod, "train", counting)
    return trained


def test_leftover_building_folder_is_not_a_teacher(splits, store, monkeypatch):
    key = teacher_key(TEACHER, splits)
    leftover = store / f".building-tinycnn-{key}-crashed"
    leftover.mkdir(parents=True)
    save_model(leftover / "model.pt", create_model("tinycnn"), "tinycnn", {"val_acc": 0.0, "test_acc": 0.0})
    trained = _count_trainings(monkeypatch)
    teacher = obtain_teacher(TEACHER, splits, CPU, store=store)
    assert trained == [TEACHER]
    assert teacher.path == store / f"tinycnn-{key}" / "model.pt" and teacher.path.is_file()


def test_entry_without_model_is_not_a_teacher(splits, store, monkeypatch):
    entry = store / f"tinycnn-{teacher_key(TEACHER, splits)}"
    entry.mkdir(parents=True)
    (entry / "meta.json").write_text('{"val_acc": 0.99}\n')  # e.g. model.pt deleted to force a retrain
    trained = _count_trainings(monkeypatch)
    teacher = obtain_teacher(TEACHER, splits, CPU, store=store)
    assert trained == [TEACHER]
    assert teacher.path == entry / "model.pt" and teacher.path.is_file()
    assert teacher.meta["val_acc"] != 0.99


def test_teacher_path_is_trained_once_then_loaded(splits, tmp_path, monkeypatch):
    path = tmp_path / "mine" / "teacher.pt"
    first = obtain_teacher(TEACHER, splits, CPU, teacher_path=path)
    assert first.path == path and path.is_file()
    monkeypatch.setattr(teacher_mod, "train", lambda *a, **k: pytest.fail("retrained an existing --teacher-path"))
    second = obtain_teacher(TEACHER, splits, CPU, teacher_path=path)
    assert second.meta["val_acc"] == first.meta["val_acc"]
    with pytest.raises(UserError, match="resnet20"):
        obtain_teacher(RunConfig(model="resnet20", epochs=1), splits, CPU, teacher_path=path)


@pytest.mark.parametrize("recorded", [None, "other-splits"])
def test_teacher_path_from_other_splits_is_refused_unless_allowed(splits, tmp_path, recorded):
    """A teacher trained on other splits may have seen this run's validation images: refused by default."""
    path = tmp_path / "foreign.pt"
    meta = {"val_acc": 0.5, "test_acc": 0.5, **({"data_key": recorded} if recorded else {})}
    save_model(path, create_model("tinycnn"), "tinycnn", meta)
    with pytest.raises(UserError, match="--allow-foreign-teacher") as refused:
        obtain_teacher(TEACHER, splits, CPU, teacher_path=path)
    assert ("records no data splits" if recorded is None else "trained on data splits other-splits") in str(refused.value)
    allowed = obtain_teacher(TEACHER, splits, CPU, teacher_path=path, allow_foreign=True)
    assert allowed.meta["foreign_data"] == {"recorded_splits": recorded, "run_splits": splits.key}


def test_teacher_label_smoothing_is_part_of_the_store_key(splits):
    smoothed = RunConfig(**{**TEACHER.to_dict(), "label_smoothing": 0.1})
    assert teacher_key(smoothed, splits) != teacher_key(TEACHER, splits)
    assert TEACHER.label_smoothing == 0.0  # teachers are not smoothed unless asked


# ----------------------------------------------------------------------------- the logit cache


def test_cache_is_reused_and_extended_one_epoch_at_a_time(splits, store, counted):
    teacher = obtain_teacher(TEACHER, splits, CPU, store=store)
    two = teacher_logits(teacher, splits, aug_seed=0, epochs=2, device=CPU)
    assert counted["epochs"] == [0, 1] and counted["predict"] == 2  # val and test
    counted["epochs"].clear()
    counted["predict"] = 0
    three = teacher_logits(teacher, splits, aug_seed=0, epochs=3, device=CPU)
    assert counted["epochs"] == [2] and counted["predict"] == 0
    assert torch.equal(three.train[:2], two.train) and torch.equal(three.val, two.val)
    counted["epochs"].clear()
    again = teacher_logits(teacher, splits, aug_seed=0, epochs=3, device=CPU)
    assert counted["epochs"] == [] and counted["predict"] == 0
    assert torch.equal(again.train, three.train)


def test_damaged_epoch_file_is_rebuilt(splits, store, counted):
    teacher = obtain_teacher(TEACHER, splits, CPU, store=store)
    good = teacher_logits(teacher, splits, aug_seed=0, epochs=2, device=CPU)
    (damaged,) = teacher.path.parent.rglob("epoch-0001.pt")
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    counted["epochs"].clear()
    rebuilt = teacher_logits(teacher, splits, aug_seed=0, epochs=2, device=CPU)
    assert counted["epochs"] == [1]
    torch.testing.assert_close(rebuilt.train, good.train, rtol=1e-3, atol=1e-3)
    assert torch.load(damaged, weights_only=True).shape == (256, 10)  # rewritten whole


def test_wrong_shape_epoch_file_is_rebuilt(splits, store, counted):
    teacher = obtain_teacher(TEACHER, splits, CPU, store=store)
    teacher_logits(teacher, splits, aug_seed=0, epochs=1, device=CPU)
    (cached,) = teacher.path.parent.rglob("epoch-0000.pt")
    torch.save(torch.zeros(5, 10, dtype=torch.float16), cached)
    counted["epochs"].clear()
    assert teacher_logits(teacher, splits, aug_seed=0, epochs=1, device=CPU).train.shape == (1, 256, 10)
    assert counted["epochs"] == [0]


def test_overwritten_teacher_file_gets_a_fresh_cache(splits, tmp_path, counted):
    path = tmp_path / "teacher.pt"
    teacher = obtain_teacher(TEACHER, splits, CPU, teacher_path=path)
    old = teacher_logits(teacher, splits, aug_seed=0, epochs=1, device=CPU)
    torch.manual_seed(123)
    save_model(path, create_model("tinycnn"), "tinycnn", {"val_acc": 0.0, "test_acc": 0.0, "data_key": splits.key})
    replaced = obtain_teacher(TEACHER, splits, CPU, teacher_path=path)
    counted["epochs"].clear()
    new = teacher_logits(replaced, splits, aug_seed=0, epochs=1, device=CPU)
    assert counted["epochs"] == [0]
    assert not torch.equal(new.train, old.train)


def test_cache_aug_seed_must_match_the_run(splits, store):
    teacher = obtain_teacher(TEACHER, splits, CPU, store=store)
    cache = teacher_logits(teacher, splits, aug_seed=0, epochs=2, device=CPU)
    wrong = RunConfig(**{**STUDENT.to_dict(), "aug_seed": 1})
    with pytest.raises(UserError, match="aug_seed"):
        train(wrong, splits, CPU, teacher=CachedTeacher(cache, splits, CPU))


def test_cache_for_other_splits_is_refused(splits, store):
    teacher = obtain_teacher(TEACHER, splits, CPU, store=store)
    cache = teacher_logits(teacher, splits, aug_seed=0, epochs=1, device=CPU)
    other = synthetic_splits(seed=1)
    with pytest.raises(UserError, match="splits"):
        CachedTeacher(cache, other, CPU)


# ----------------------------------------------------------------------------- preparation: where the heavy part runs


def _fake_remote(splits: Splits, calls: list):
    """A run_heavy that does what kdtune.sweep.runner's Ray task does, in this process: plain values across a copy."""

    def run(config, model, names):
        calls.append((model is None, list(names)))
        state = None if model is None else copy.deepcopy(model.state_dict())  # what crosses the process boundary
        new_state, meta, logits = heavy_part_from_state(config, splits, state, list(names), 0, CPU, "fp32")
        new_state = copy.deepcopy(new_state)
        return (None if new_state is None else model_from_state(config, splits.num_classes, new_state)), meta, logits

    return run


def _assert_same_cache(a, b):
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val) and torch.equal(a.test, b.test)
    assert (a.aug_seed, a.splits_key) == (b.aug_seed, b.splits_key)


def test_in_process_and_remote_heavy_part_give_the_same_teacher_and_cache(splits, tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    calls = []
    local_teacher, local = prepare_teacher(TEACHER, splits, here, 0, 2, "fp32")
    remote_teacher, remote = prepare_teacher(TEACHER, splits, there, 0, 2, "fp32", run_heavy=_fake_remote(splits, calls))
    assert calls == [(True, ["val", "test", 0, 1])]  # trained, then every entry computed, in one task
    assert remote_teacher.path == there / local_teacher.path.relative_to(here) and remote_teacher.path.is_file()
    for a, b in zip(local_teacher.model.state_dict().values(), remote_teacher.model.state_dict().values()):
        assert torch.equal(a, b)
    _assert_same_cache(local, remote)
    assert remote.train.shape == (2, 256, 10) and remote.train.dtype == torch.float16

    # Nothing missing: found in the store and read from the cache, run_heavy not called at all.
    again_teacher, again = prepare_teacher(TEACHER, splits, there, 0, 2, "fp32", run_heavy=_fake_remote(splits, calls))
    assert len(calls) == 1 and again_teacher.path == remote_teacher.path
    _assert_same_cache(again, remote)

    # One more epoch: only it, with the stored teacher (not retrained), is computed; the same as in-process.
    _, longer = prepare_teacher(TEACHER, splits, there, 0, 3, "fp32", run_heavy=_fake_remote(splits, calls))
    assert calls[1:] == [(False, [2])]
    _, local_longer = prepare_teacher(TEACHER, splits, here, 0, 3, "fp32")
    _assert_same_cache(longer, local_longer)
    assert torch.equal(longer.train[:2], remote.train)
    # And the public non-Ray entry points read the same files.
    _assert_same_cache(teacher_logits(obtain_teacher(TEACHER, splits, CPU, store=there), splits, 0, 3, CPU, "fp32"),
                       longer)


def test_recorded_teacher_missing_from_the_store_is_refused_not_retrained(splits, store):
    def never(*args):
        pytest.fail("ran the heavy part for a recorded teacher")

    with pytest.raises(UserError, match="never retrained silently"):
        prepare_teacher(TEACHER, splits, store, 0, 1, "fp32", recorded="/gone/model.pt", run_heavy=never)
    assert not store.exists()


def test_missing_teacher_path_is_refused_unless_it_may_be_trained(splits, tmp_path):
    path = tmp_path / "absent.pt"
    with pytest.raises(UserError, match="does not exist"):
        prepare_teacher(TEACHER, splits, None, 0, 1, "fp32", teacher_path=path)  # a sweep's --teacher-path
    teacher, cache = prepare_teacher(TEACHER, splits, None, 0, 1, "fp32", teacher_path=path, train_missing_path=True)
    assert teacher.path == path and path.is_file() and cache.train.shape == (1, 256, 10)
