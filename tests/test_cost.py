"""The dry run's wall-clock estimate: its arithmetic against a schedule worked out by hand, and its plan."""

from __future__ import annotations

import pytest
import torch

from kdtune.sweep import estimate as cost
from kdtune.sweep.estimate import RAY_START_S, TRIAL_START_S, Speeds, Work, phase_packs
from kdtune.sweep.settings import build_settings, plan

SPEEDS = Speeds(student_train=100.0, student_eval=400.0, teacher_train=50.0, teacher_eval=200.0)


def work(**changes) -> Work:
    values = dict(n_train=1000, n_val=200, n_test=400, epochs=3, teacher_epochs=2, test_every=0,
                  phase_packs={"baseline": [3], "sweep": [3, 3, 3], "confirm": []}, train_teacher=True,
                  build_cache=True)
    return Work(**{**values, **changes})


def test_one_student_trains_and_validates_every_epoch_and_tests_once():
    # 3 epochs x (1000 / 100 + 200 / 400) + 400 / 400
    assert cost.student_seconds(work(), SPEEDS) == pytest.approx(3 * 10.5 + 1.0)
    # --test-every 2 of 3 epochs: after epoch 2 and after the last
    assert cost.student_seconds(work(test_every=2), SPEEDS) == pytest.approx(3 * 10.5 + 2.0)
    # --test-every 3 of 3: only after the last, once
    assert cost.student_seconds(work(test_every=3), SPEEDS) == pytest.approx(3 * 10.5 + 1.0)


def test_the_whole_estimate_by_hand_on_two_slots():
    student = 3 * 10.5 + 1.0  # 32.5 s
    pack = TRIAL_START_S + 3 * student  # a trial of 3 seeds
    # baseline: one trial, one slot idle; sweep: 3 trials on 2 slots -> two waves
    want_phases = {"baseline": pack, "sweep": 2 * pack, "confirm": 0.0}
    teacher = 2 * 1000 / 50 + (200 + 400) / 200
    cache = (3 * 1000 + 200 + 400) / 200
    got = cost.estimate(work(), SPEEDS, slots=2)
    assert got.phase_s == pytest.approx(want_phases)
    assert got.teacher_s == pytest.approx(teacher) and got.cache_s == pytest.approx(cache)
    assert got.total_s == pytest.approx(RAY_START_S + teacher + cache + 3 * pack)
    stored = cost.estimate(work(train_teacher=False, build_cache=False), SPEEDS, slots=2)
    assert stored.total_s == pytest.approx(RAY_START_S + 3 * pack)


def test_uneven_trials_take_the_first_free_slot():
    # trials of 4, 1, 1, 1 students on 2 slots: the small ones share the second slot while the big one runs
    one = 10.0
    got = cost.phase_seconds([4, 1, 1, 1], one, slots=2)
    assert got == pytest.approx(TRIAL_START_S + 4 * one)
    # 1, 1 start together; the third 1 and then the 4 take the slots as they free: the 4 starts after one small one
    assert cost.phase_seconds([1, 1, 1, 4], one, slots=2) == pytest.approx((TRIAL_START_S + one) + TRIAL_START_S + 4 * one)


def test_slots_follow_ray_accounting():
    assert cost.slots_here(1.0, 0.0, None, cpus=2, gpus=0) == 2
    assert cost.slots_here(2.0, 0.0, None, cpus=2, gpus=0) == 1
    assert cost.slots_here(1.0, 1.0, None, cpus=16, gpus=1) == 1
    assert cost.slots_here(1.0, 0.25, 3, cpus=16, gpus=1) == 3


def test_measure_gives_positive_throughputs_and_restores_threads():
    from helpers import synthetic_splits

    from kdtune.engine.models import create_model

    before = torch.get_num_threads()
    from kdtune.engine.speed import measure

    train, evaluate = measure(create_model("tinycnn"), 16, synthetic_splits(32, 8, 8), torch.device("cpu"),
                                   threads=1, steps=1)
    assert train > 0 and evaluate > 0
    assert torch.get_num_threads() == before


def test_phase_packs_follow_the_plan():
    grid = build_settings("x", "grid", "temperature", "quick", data_dir="unused", train_subset=5000, seeds=3,
                          num_samples=1, sampler="tpe",
                          search_seed=0, asha=False, reduction_factor=3, max_failures=0, confirm=2)
    # The baseline's pack is the sweep experiment's first trial, launched before the grid's.
    assert phase_packs(grid) == {"sweep": [3] * 11, "confirm": [2, 2]}
    assert plan(grid)["tune_trials"] == {"sweep": 11, "confirm": 2}
    # Rounds of one pack's time: 11 equal packs take 6 rounds on 2 slots and 3 on 4 (no slot waits for the baseline).
    pack_s = TRIAL_START_S + 3 * 1.0  # a trial's start-up and its 3 students of 1 s each
    rounds = {slots: cost.phase_seconds(phase_packs(grid)["sweep"], 1.0, slots) / pack_s for slots in (2, 4)}
    assert rounds == {2: 6.0, 4: 3.0}
    packed = build_settings("x", "grid", "temperature", "quick", data_dir="unused", train_subset=5000, seeds=3,
                            num_samples=1,
                            sampler="tpe", search_seed=0, asha=False, reduction_factor=3, max_failures=0, pack=8)
    assert phase_packs(packed) == {"sweep": [8, 8, 8, 8, 1], "confirm": []}
