"""Packed training on the CPU: a pack's members reproduce their unpacked runs exactly, a resumed pack
equals an uninterrupted one, and a pack's report is the mean over its members plus each member's own."""

from __future__ import annotations

import pytest
import torch
from helpers import synthetic_splits

from kdtune.engine.config import RunConfig
from kdtune.engine.pack import pack_metrics, train_pack
from kdtune.engine.train import LiveTeacher, train

CPU = torch.device("cpu")
TIMING = ("epoch_s", "images_per_s")
pytestmark = pytest.mark.usefixtures("one_thread")


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


@pytest.fixture(scope="module")
def splits():
    return synthetic_splits(n_train=192, n_val=48, n_test=48)


@pytest.fixture(scope="module")
def teacher(splits):
    from kdtune.engine.models import create_model

    torch.manual_seed(99)
    return LiveTeacher(create_model("tinycnn"), splits, CPU, "fp32")


def members(seeds=(0, 1, 2), **overrides) -> list[RunConfig]:
    # cnn3 has dropout: each member's own random state matters, not only its initialisation.
    values = {"model": "cnn3", "epochs": 2, "batch_size": 64, "recipe": "strong", "alpha": 0.5, "temperature": 4.0}
    return [RunConfig(**{**values, **overrides, "seed": s}) for s in seeds]


def assert_same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_a_packed_loop_reproduces_unpacked_runs_exactly(splits, teacher):
    configs = members()
    alone = [train(c, splits, CPU, teacher=teacher) for c in configs]
    packed = train_pack(configs, splits, CPU, teacher=teacher)
    assert len(packed) == 3
    for a, p in zip(alone, packed):
        assert without_timing(p.history) == without_timing(a.history)
        assert_same_model(p.model, a.model)
    assert alone[0].history[-1]["val_acc"] != alone[1].history[-1]["val_acc"] or \
        alone[0].history[-1]["train_loss"] != alone[1].history[-1]["train_loss"]  # the seeds really differ


def test_a_resumed_pack_equals_an_uninterrupted_one(splits, teacher):
    configs = members(epochs=3)
    saved = []
    full = train_pack(configs, splits, CPU, teacher=teacher, on_epoch=lambda m, states: saved.append(states))
    assert len(saved) == 3 and all(len(states) == 3 for states in saved)
    after_one = saved[0]
    resumed = train_pack(configs, splits, CPU, teacher=teacher, resume=after_one)
    for f, r in zip(full, resumed):
        assert without_timing(r.history) == without_timing(f.history)
        assert_same_model(r.model, f.model)


def test_members_advance_in_lockstep_and_report_their_mean(splits, teacher):
    configs = members(seeds=(3, 5))
    reports = []
    train_pack(configs, splits, CPU, teacher=teacher,
               on_epoch=lambda metrics, states: reports.append(pack_metrics(metrics, configs)))
    assert [r["epoch"] for r in reports] == [1, 2]
    for report in reports:
        mean = (report["s3/val_acc"] + report["s5/val_acc"]) / 2
        assert report["val_acc"] == pytest.approx(mean, rel=1e-12)
        assert report["diverged"] is False and report["s5/epoch"] == report["epoch"]
    assert "test_acc" in reports[-1] and "test_acc" not in reports[0]  # the test set after the last epoch only


def test_a_diverging_member_stops_the_pack(splits, teacher):
    configs = members(seeds=(0, 1), lr=1e30, epochs=3)  # an absurd learning rate: non-finite loss
    reports = []
    train_pack(configs, splits, CPU, teacher=teacher,
               on_epoch=lambda metrics, states: reports.append(pack_metrics(metrics, configs)))
    assert reports[-1]["diverged"] is True and len(reports) < 3


def test_in_a_pack_of_several_configurations_a_diverged_member_stops_alone(splits, teacher):
    """--pack N: a diverging configuration packed beside the baseline; the baseline trains to its end, exactly
    as alone, and a resume from after the divergence neither trains the diverged member on nor stops the rest."""
    baseline, wild = members(seeds=(0,), alpha=0.0, epochs=3)[0], members(seeds=(1,), lr=1e30, epochs=3)[0]
    alone = train(baseline, splits, CPU, teacher=teacher)  # no KD; the teacher is what its fidelity is measured against
    reports, saved = [], []

    def on_epoch(metrics, states):
        reports.append(pack_metrics(metrics, [baseline, wild], ["m0", "m1"]))
        saved.append(states)

    results = train_pack([baseline, wild], splits, CPU, teacher=teacher, on_epoch=on_epoch)
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    assert reports[0]["m1/diverged"] is True and not any("m1/epoch" in r for r in reports[1:])
    assert all(r["m0/diverged"] is False for r in reports) and reports[-1]["m0/epoch"] == 3
    assert without_timing(results[0].history) == without_timing(alone.history)
    assert len(results[1].history) == 1 and results[1].history[-1]["diverged"]
    assert all(len(states) == 2 for states in saved)  # the diverged member keeps its last state in every checkpoint
    resumed = train_pack([baseline, wild], splits, CPU, teacher=teacher, resume=saved[0])
    assert without_timing(resumed[0].history) == without_timing(alone.history)
    assert len(resumed[1].history) == 1


# ----------------------------------------------------------------------------- pack mode auto, by measuring


def test_auto_stacks_only_where_the_stack_measured_faster_and_remembers_it(monkeypatch, tmp_path, splits):
    from kdtune.engine import pack

    monkeypatch.setenv("KDTUNE_CACHE_DIR", str(tmp_path))
    kd = members(seeds=(0, 1), model="tinycnn")
    rates = {"loop": 1000.0, "stack": 1500.0}
    asked = []

    def fake(configs, splits, device, teacher=None, steps=pack.PROBE_STEPS):
        asked.append(len(configs))
        return dict(rates)

    monkeypatch.setattr(pack, "measure_pack_modes", fake)
    first = pack.decide_pack_mode("auto", kd, splits, CPU)
    assert (first.mode, first.loop_images_per_s, first.stack_images_per_s) == ("stack", 1000.0, 1500.0)
    assert "measured here" in first.why and first.metrics()["pack_mode"] == "stack"
    rates["stack"] = 10.0  # a slower second measurement is never taken: the first is remembered
    again = pack.decide_pack_mode("auto", kd, splits, CPU)
    assert again.mode == "stack" and "earlier" in again.why and asked == [2]
    three = pack.decide_pack_mode("auto", members(seeds=(0, 1, 2), model="tinycnn"), splits, CPU)
    assert three.mode == "loop" and asked == [2, 3]  # another pack size is another question: 10 < 1000
    rates.update(loop=1000.0, stack=1040.0)  # within the 5% margin: the exact loop
    assert pack.decide_pack_mode("auto", members(seeds=(0, 1, 2, 3), model="tinycnn"), splits, CPU).mode == "loop"
    # Nothing measured where there is nothing to choose.
    alone = pack.decide_pack_mode("auto", kd[:1], splits, CPU)
    mixed = pack.decide_pack_mode("auto", members(seeds=(0, 1), model="tinycnn", method="ls"), splits, CPU)
    named = pack.decide_pack_mode("loop", kd, splits, CPU)
    assert (alone.mode, mixed.mode, named.mode) == ("loop", "loop", "loop") and len(asked) == 3
    assert "cannot stack" in mixed.why and alone.metrics() == {"pack_mode": "loop"}


def test_measuring_the_modes_leaves_the_training_exactly_as_it_was(splits, teacher):
    from kdtune.engine.pack import measure_pack_modes

    kd = members(seeds=(0, 1), model="tinycnn", epochs=1)
    before = [r.final for r in train_pack(kd, splits, CPU, teacher=teacher)]
    rates = measure_pack_modes(kd, splits, CPU, teacher, steps=1)
    assert set(rates) == {"loop", "stack"} and min(rates.values()) > 0
    after = [r.final for r in train_pack(kd, splits, CPU, teacher=teacher)]
    assert without_timing(before) == without_timing(after)
