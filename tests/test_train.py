"""The training loop on tiny synthetic data, on CPU: determinism, callbacks, resume, divergence, schedules."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from helpers import synthetic_splits

from kdtune.engine.config import RunConfig
from kdtune.engine.data import Splits
from kdtune.engine.device import resolve_device
from kdtune.engine.errors import UserError
from kdtune.engine.models import create_model
from kdtune.engine.train import LiveTeacher, load_optimizer_state, lr_factor, train

CPU = torch.device("cpu")
TIMING_KEYS = ("epoch_s", "images_per_s")  # wall-clock measurements: never compared between runs
TEST_KEYS = {"test_acc", "test_nll", "test_ece"}  # after the last epoch only, unless test_every asks for more
EPOCH_KEYS = {"epoch", "train_loss", "train_ce", "train_kd", "lr", "val_acc", "val_nll", "val_ece",
              "epoch_s", "images_per_s", "diverged"}


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def splits() -> Splits:
    return synthetic_splits()


def _config(**overrides) -> RunConfig:
    return RunConfig(**{"model": "tinycnn", "epochs": 2, "batch_size": 64, **overrides})


def test_same_config_gives_identical_history(splits):
    a = train(_config(), splits, CPU)
    b = train(_config(), splits, CPU)
    assert len(a.history) == 2
    assert without_timing(a.history) == without_timing(b.history)
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_different_seed_gives_different_history(splits):
    a = train(_config(epochs=1), splits, CPU)
    b = train(_config(epochs=1, seed=1), splits, CPU)
    assert a.history[0]["train_loss"] != b.history[0]["train_loss"]


def test_it_learns_the_synthetic_task(splits):
    result = train(_config(epochs=4, lr=3e-3), splits, CPU)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.final["val_acc"] > 0.3  # chance is 0.1


@pytest.mark.parametrize("model", ["tinycnn", "helpers:tiny_a"])
def test_it_learns_three_classes_of_40x40_images(three_class_dir, model):
    from kdtune.engine.data import load_dataset, make_splits

    data = make_splits(load_dataset(three_class_dir), val_size=30)
    assert data.num_classes == 3 and data.image_size == (40, 40)
    result = train(_config(model=model, epochs=4, batch_size=30, lr=3e-3), data, CPU)
    assert result.model(torch.zeros(1, 3, 40, 40)).shape == (1, 3)
    assert result.final["val_acc"] > 0.6 and result.final["test_acc"] > 0.6, result.final  # chance is 1/3


def test_on_epoch_called_once_per_epoch_with_every_metric(splits):
    calls = []
    teacher_model = create_model("tinycnn")  # random init is enough to be a teacher signal
    teacher = LiveTeacher(teacher_model, splits, CPU, "fp32")
    config = _config(epochs=3, alpha=0.5, temperature=4.0)
    result = train(config, splits, CPU, teacher=teacher, on_epoch=lambda m, state: calls.append((dict(m), state)))
    assert [m["epoch"] for m, _ in calls] == [1, 2, 3]
    for metrics, state in calls:
        assert EPOCH_KEYS | {"agreement"} <= set(metrics)
        assert (TEST_KEYS <= set(metrics)) == (metrics["epoch"] == 3)
        assert metrics["diverged"] is False
        assert 0.0 <= metrics["agreement"] <= 1.0
        assert metrics["train_loss"] == pytest.approx(0.5 * metrics["train_kd"] + 0.5 * metrics["train_ce"], rel=1e-5)
        assert metrics["images_per_s"] > 0 and metrics["epoch_s"] > 0
    assert [m for m, _ in calls] == result.history
    saved = calls[-1][1]()  # the checkpoint_state callable
    assert {"model", "optimizer", "scheduler", "rng", "history", "config"} <= set(saved)
    assert saved["config"] == config.to_dict() and len(saved["history"]) == 3


def test_test_set_evaluated_once_per_run_by_default(monkeypatch):
    """Evaluation is most of a small model's epoch: the test set once, after the last epoch, unless asked."""
    import kdtune.engine.train as train_mod

    evaluated = []
    real = train_mod.predict
    monkeypatch.setattr(train_mod, "predict", lambda m, images, *a: evaluated.append(len(images)) or real(m, images, *a))
    splits = synthetic_splits(n_val=48, n_test=80)  # told apart by their sizes
    n_val, n_test = 48, 80
    result = train(_config(epochs=3), splits, CPU)
    assert evaluated == [n_val, n_val, n_val, n_test]
    assert [TEST_KEYS <= set(h) for h in result.history] == [False, False, True]
    evaluated.clear()
    every = train(_config(epochs=4), splits, CPU, test_every=2)
    assert [TEST_KEYS <= set(h) for h in every.history] == [False, True, False, True]
    assert evaluated.count(n_test) == 2
    evaluated.clear()
    teacher = train(_config(epochs=3), splits, CPU, val_every=3)  # how a teacher is trained: evaluated at its end
    assert evaluated == [n_val, n_test] and "val_acc" in teacher.final and "val_acc" not in teacher.history[0]


def test_no_agreement_without_teacher(splits):
    seen = []
    train(_config(epochs=1), splits, CPU, on_epoch=lambda m, state: seen.append(m))
    assert len(seen) == 1
    assert EPOCH_KEYS <= set(seen[0]) and "agreement" not in seen[0]
    assert seen[0]["train_kd"] == 0.0 and seen[0]["train_loss"] == seen[0]["train_ce"]


def test_reported_lr_follows_the_schedule(splits):
    config = _config(epochs=3, recipe="strong", lr=0.05)
    result = train(config, splits, CPU)
    steps = math.ceil(256 / 64)
    for h in result.history:
        assert h["lr"] == pytest.approx(0.05 * lr_factor(h["epoch"] * steps, steps, config), abs=1e-12)
    assert result.history[-1]["lr"] == 0.0  # one-cycle ends at zero


@pytest.mark.parametrize("model, recipe", [("tinycnn", "seed"), ("cnn3", "strong")])
def test_resume_reproduces_uninterrupted_run(splits, model, recipe):
    """cnn3 has dropout (the global RNG must be restored); strong is SGD + one-cycle (scheduler state)."""
    small = dataclasses.replace(splits, train_images=splits.train_images[:128], train_labels=splits.train_labels[:128],
                                test_images=splits.test_images[:16], test_labels=splits.test_labels[:16])
    config = _config(model=model, recipe=recipe, epochs=3, batch_size=32)
    states = {}

    def keep(metrics, checkpoint_state):
        states[metrics["epoch"]] = checkpoint_state()

    full = train(config, small, CPU, on_epoch=keep)
    assert len(full.history) == 3
    # Training the model further must not change a state taken earlier.
    resumed = train(config, small, CPU, resume=states[1])
    assert len(resumed.history) == 3
    assert without_timing(resumed.history) == without_timing(full.history)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_resume_on_cuda_restores_the_cuda_generator(splits):
    """cnn3's dropout draws from the CUDA generator: after a resume it must continue where the run left off."""
    cuda = torch.device("cuda")
    config = _config(model="cnn3", epochs=2, batch_size=32, precision="fp32")
    full, resumed = {}, {}
    train(config, splits, cuda, on_epoch=lambda m, s: full.__setitem__(m["epoch"], s()))
    assert "cuda_rng" in full[1]
    torch.cuda.manual_seed_all(12345)  # a resume that forgot the CUDA state would continue from this one
    train(config, splits, cuda, resume=full[1], on_epoch=lambda m, s: resumed.__setitem__(m["epoch"], s()))
    assert torch.equal(resumed[2]["cuda_rng"], full[2]["cuda_rng"])


def test_resume_of_a_finished_run_trains_nothing(splits):
    states = []
    config = _config(epochs=1)
    full = train(config, splits, CPU, on_epoch=lambda m, s: states.append(s()))
    again = train(config, splits, CPU, resume=states[-1], on_epoch=lambda m, s: pytest.fail("trained again"))
    assert again.history == full.history


class RecordingBar:
    """A tqdm-like class as Ray's tqdm_ray is one: takes total, desc and unit; records what it is told."""

    made: list["RecordingBar"] = []

    def __init__(self, total=None, desc=None, unit=None):
        self.total, self.desc, self.unit, self.n, self.closed = total, desc, unit, 0, False
        RecordingBar.made.append(self)

    def update(self, n=1):
        self.n += n

    def set_description(self, desc):
        self.desc = desc

    def close(self):
        self.closed = True


def test_progress_goes_to_the_bar_class_given(splits):
    """The loop draws its bar with the class it is given (tqdm_ray inside Ray), resumed runs included."""
    RecordingBar.made.clear()
    config = _config(epochs=2, batch_size=64)  # 256 images: 4 steps an epoch
    states = []
    result = train(config, splits, CPU, on_epoch=lambda m, s: states.append(s()), progress=RecordingBar, desc="x")
    train(config, splits, CPU, resume=states[0], progress=RecordingBar, desc="x")
    first, resumed = RecordingBar.made
    assert (first.total, first.n, first.unit, first.closed) == (8, 8, "step", True)
    assert first.desc == f"x (loss {result.final['train_loss']:.3f}, val_acc {result.final['val_acc']:.3f})"
    assert (resumed.total, resumed.n, resumed.closed) == (8, 8, True)  # starts at 4: epoch 1 was done


def test_ray_tqdm_fits_the_loop(splits):
    """Ray's tqdm_ray offers only part of tqdm's interface; the loop must use no more than that."""
    tqdm_ray = pytest.importorskip("ray.experimental.tqdm_ray")
    result = train(_config(epochs=1), splits, CPU, progress=tqdm_ray.tqdm)
    assert len(result.history) == 1


def test_alpha_without_teacher_is_a_user_error(splits):
    with pytest.raises(UserError, match="teacher"):
        train(_config(alpha=0.5), splits, CPU)


def test_huge_learning_rate_diverges_and_stops(splits):
    seen = []
    result = train(_config(epochs=4, lr=1e30), splits, CPU, on_epoch=lambda m, s: seen.append(m))
    assert result.final["diverged"] is True
    assert not math.isfinite(result.final["train_loss"])
    assert len(result.history) < 4 and len(seen) == len(result.history)
    assert all(h["diverged"] is False for h in result.history[:-1])


def test_resolve_device():
    assert resolve_device("cpu") == CPU
    with pytest.raises(UserError, match="nonsense"):
        resolve_device("nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA"):
            resolve_device("cuda")
        assert resolve_device("auto") == CPU


# ----------------------------------------------------------------------------- schedules


def test_step_schedule():
    config = RunConfig(model="tinycnn", epochs=30)  # seed recipe: step_size 10, gamma 0.1
    spe = 5
    assert [lr_factor(e * spe, spe, config) for e in (0, 9)] == [1.0, 1.0]
    assert lr_factor(10 * spe - 1, spe, config) == 1.0
    assert lr_factor(10 * spe, spe, config) == pytest.approx(0.1)
    assert lr_factor(19 * spe + 4, spe, config) == pytest.approx(0.1)
    assert lr_factor(20 * spe, spe, config) == pytest.approx(0.01)


def test_cosine_schedule():
    config = RunConfig(model="tinycnn", epochs=10, recipe="cosine")
    spe = 7
    total = spe * 10
    assert lr_factor(0, spe, config) == 1.0
    assert lr_factor(total // 2, spe, config) == pytest.approx(0.5)
    assert lr_factor(total, spe, config) == pytest.approx(0.0, abs=1e-12)
    values = [lr_factor(s, spe, config) for s in range(total + 1)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_onecycle_schedule():
    config = RunConfig(model="tinycnn", epochs=10, recipe="strong")
    spe = 10
    total = 100
    values = [lr_factor(s, spe, config) for s in range(total + 1)]
    peak = values.index(max(values))
    assert values[0] == 0.0 and max(values) == pytest.approx(1.0)
    assert peak == 20  # 20% warm-up
    assert all(a < b for a, b in zip(values[:peak], values[1 : peak + 1]))
    assert all(a > b for a, b in zip(values[peak:-1], values[peak + 1 :]))
    assert values[-1] == 0.0


@pytest.mark.parametrize("optimizer", [torch.optim.Adam, torch.optim.SGD])
@pytest.mark.parametrize("saved_fused, built_fused", [(True, None), (None, True)])
def test_optimizer_state_from_another_device_keeps_the_update_built_here(optimizer, saved_fused, built_fused):
    """A checkpoint's optimiser groups carry the fused choice of the device that wrote them (fused on CUDA):
    a resume keeps the choice made for its own device, and steps to the same parameters as an uninterrupted run."""
    def model_and_optimizer(fused):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        kwargs = {"momentum": 0.9} if optimizer is torch.optim.SGD else {}
        return model, optimizer(model.parameters(), lr=0.1, fused=fused, **kwargs)

    def step(model, opt, seed):
        torch.manual_seed(seed)
        opt.zero_grad()
        model(torch.randn(8, 4)).square().mean().backward()
        opt.step()

    writer, written = model_and_optimizer(saved_fused)
    step(writer, written, 1)
    reader, read = model_and_optimizer(built_fused)
    reader.load_state_dict(copy.deepcopy(writer.state_dict()))  # as from a checkpoint file: no shared tensors
    load_optimizer_state(read, copy.deepcopy(written.state_dict()))
    assert read.param_groups[0]["fused"] == built_fused and read.param_groups[0]["lr"] == 0.1
    step(writer, written, 2)
    step(reader, read, 2)
    for a, b in zip(writer.parameters(), reader.parameters()):
        torch.testing.assert_close(a, b)
