"""--precision auto: bf16 where the device computes it natively and a measurement shows it faster for the model,
decided once per role (students, teacher, logit cache) and recorded; fp32 reproduces the numbers of before."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import synthetic_splits

from kdtune.engine import speed
from kdtune.engine.config import RunConfig
from kdtune.engine.models import create_model
from kdtune.engine.train import train

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_memory(tmp_path, monkeypatch):
    """Each test measures anew: remembered choices go to a folder of its own."""
    monkeypatch.setenv("KDTUNE_CACHE_DIR", str(tmp_path / "cache"))


def never(*args, **kwargs):
    raise AssertionError("measured where no measurement was wanted")


def fake_measure(ratios: dict):
    """images/s of 100 in fp32 and 100 x ratio in bf16, for training and evaluation alike, per model class."""
    def measure(model, batch_size, splits, device, threads, steps=3, precision="auto"):
        rate = 100.0 * (ratios[type(model).__name__] if precision == "bf16" else 1.0)
        return rate, rate

    return measure


def test_cuda_keeps_bf16_and_a_cpu_without_native_bf16_keeps_fp32_without_measuring(monkeypatch):
    monkeypatch.setattr(speed, "measure", never)
    model, splits = create_model("tinycnn"), synthetic_splits(32, 8, 8)
    monkeypatch.setattr(speed, "native_bf16", lambda device: True)
    assert speed.choose_precision(model, 16, splits, torch.device("cuda"), 1).precision == "bf16"
    monkeypatch.setattr(speed, "native_bf16", lambda device: False)
    choice = speed.choose_precision(model, 16, splits, torch.device("cuda"), 1)
    assert (choice.precision, choice.speedup) == ("fp32", None) and "no native bf16" in choice.why
    choice = speed.choose_precision(model, 16, splits, CPU, 1)
    assert (choice.precision, choice.speedup) == ("fp32", None) and "no native bf16" in choice.why


@pytest.mark.parametrize("ratio, precision", [(1.8, "bf16"), (1.02, "fp32"), (0.7, "fp32")])
def test_a_cpu_with_native_bf16_takes_it_only_where_it_measured_faster(monkeypatch, ratio, precision):
    monkeypatch.setattr(speed, "native_bf16", lambda device: True)
    model = create_model("tinycnn")
    monkeypatch.setattr(speed, "measure", fake_measure({type(model).__name__: ratio}))
    choice = speed.choose_precision(model, 16, synthetic_splits(32, 8, 8), CPU, 1)
    assert (choice.precision, choice.speedup) == (precision, pytest.approx(ratio))


def test_a_measured_choice_is_remembered_so_that_a_second_run_trains_in_the_same_precision(monkeypatch, tmp_path):
    monkeypatch.setattr(speed, "native_bf16", lambda device: True)
    model, splits = create_model("tinycnn"), synthetic_splits(32, 8, 8)
    monkeypatch.setattr(speed, "measure", fake_measure({type(model).__name__: 1.3}))
    first = speed.choose_precision(model, 16, splits, CPU, 1)
    assert first.precision == "bf16" and "measured here" in first.why
    monkeypatch.setattr(speed, "measure", never)  # a busy machine would now measure bf16 slower: it is not asked
    again = speed.choose_precision(model, 16, splits, CPU, 1)
    assert (again.precision, again.speedup) == ("bf16", pytest.approx(1.3)) and "earlier" in again.why
    # Another batch size, thread count or step is another question, measured on its own.
    monkeypatch.setattr(speed, "measure", fake_measure({type(model).__name__: 0.9}))
    assert speed.choose_precision(model, 16, splits, CPU, 2).precision == "fp32"
    assert speed.choose_precision(model, 16, splits, CPU, 1, step="eval").precision == "fp32"
    assert speed.choose_precision(model, 16, splits, CPU, 1).precision == "bf16"
    # An unreadable memory is measured again, not a failure.
    (tmp_path / "cache" / "precision-choices.json").write_text("{not json")
    assert speed.choose_precision(model, 16, splits, CPU, 1).precision == "fp32"


def test_a_sweep_decides_each_role_once_records_it_and_a_resume_keeps_it(monkeypatch, three_class_dir):
    from kdtune.engine.teacher import cache_mode, teacher_key
    from kdtune.sweep.settings import build_settings, load_splits, resolve_precision

    settings = build_settings("p", "grid", {"temperature": [2], "alpha": 0.5}, "quick", data_dir=str(three_class_dir),
                              teacher="resnet20", student="tinycnn", val_size=30)
    splits = load_splits(settings)
    monkeypatch.setattr(speed, "native_bf16", lambda device: True)
    # The student gains from bf16, the teacher's training and its cache do not.
    ratios = {type(create_model("tinycnn")).__name__: 1.9, type(create_model("resnet20")).__name__: 1.01}
    monkeypatch.setattr(speed, "measure", fake_measure(ratios))
    resolved, choices = resolve_precision(settings, splits, threads=1, teacher_threads=2)
    assert resolved.resolved_precision == {"student": "bf16", "teacher": "fp32", "cache": "fp32"}
    assert choices["student"]["speedup"] == pytest.approx(1.9) and choices["teacher"]["precision"] == "fp32"
    assert resolved.student_config().precision == "bf16" and resolved.teacher_config().precision == "fp32"
    assert resolved.to_dict()["resolved_precision"] == resolved.resolved_precision  # recorded in experiment.json
    # The teacher store and the cache are keyed by what was chosen, not by "auto".
    assert teacher_key(resolved.teacher_config(), splits) != teacher_key(settings.teacher_config(), splits)
    assert cache_mode(resolved.precision_of("cache"), CPU) == "fp32"
    monkeypatch.setattr(speed, "measure", never)
    assert resolve_precision(resolved, splits, 1, 2) == (resolved, {})  # a resume keeps the recorded choice
    forced = dataclasses.replace(settings, precision="fp32")
    assert resolve_precision(forced, splits, 1, 2) == (forced, {})  # a named precision is never second-guessed


def test_forcing_fp32_on_a_cpu_reproduces_the_numbers_auto_gave_before():
    splits = synthetic_splits(64, 16, 16)
    config = RunConfig(model="tinycnn", epochs=1, batch_size=32, recipe="strong")
    auto = train(config, splits, CPU)  # on a CPU "auto" without a resolved choice is fp32, as before
    fp32 = train(dataclasses.replace(config, precision="fp32"), splits, CPU)
    strip = [{k: v for k, v in h.items() if k not in ("epoch_s", "images_per_s")} for h in auto.history]
    assert strip == [{k: v for k, v in h.items() if k not in ("epoch_s", "images_per_s")} for h in fp32.history]


def test_kdtune_train_makes_auto_concrete_on_a_cpu_as_a_sweep_does(monkeypatch, capsys):
    from kdtune.cli.single_run import _auto_precision

    splits = synthetic_splits(32, 8, 8)
    monkeypatch.setattr(speed, "native_bf16", lambda device: True)
    monkeypatch.setattr(speed, "measure", fake_measure({type(create_model("tinycnn")).__name__: 1.6}))
    config = RunConfig(model="tinycnn", epochs=1)
    chosen = _auto_precision(config, splits, CPU, "train")
    assert chosen.precision == "bf16" and "tinycnn training: bf16 (measured here: 1.60x" in capsys.readouterr().out
    named = dataclasses.replace(config, precision="fp32")
    assert _auto_precision(named, splits, CPU, "train") is named  # a named precision is never second-guessed
    assert _auto_precision(config, splits, torch.device("cuda"), "train") is config  # CUDA: auto is bf16 already


@pytest.mark.parametrize("capability, native", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_auto_is_bf16_on_gpus_from_ampere_on_and_fp32_before(monkeypatch, capability, native):
    """A V100 or T4 emulates bf16 (torch.cuda.is_bf16_supported() says yes): auto keeps fp32 there."""
    from kdtune.engine import device as devices

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    cuda = torch.device("cuda")
    assert devices.native_bf16(cuda) is native
    assert devices.uses_bf16("auto", cuda) is native
    assert devices.uses_bf16("bf16", cuda) and not devices.uses_bf16("fp32", cuda)
