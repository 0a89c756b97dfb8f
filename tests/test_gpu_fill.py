"""Trials fill a GPU by default: how many share one and how many students a trial stacks, chosen by measuring
(kdtune.engine.fill, kdtune.sweep.gpu_fill).

No GPU here: the choice is checked on measurements written in the test, the measurement's workers run for real
on the CPU, and the sweep's and dry run's use of the choice with the measurement replaced.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from kdtune.engine import fill
from kdtune.engine.fill import FILL_MARGIN, MEMORY_SHARE, FillChoice, Measured, Probe, choose_fill, process_limit
from kdtune.sweep import gpu_fill
from kdtune.sweep.settings import Resources, build_settings, plan

GIB = 2**30


def rates(**by_count) -> list[Measured]:
    return [Measured(int(k[1:]), v, 2 * GIB) for k, v in by_count.items()]


# ----------------------------------------------------------------------------- the choice


def test_the_fewest_processes_whose_every_step_up_paid():
    # 2 gains 90%, 4 gains 79% on 2, 8 gains 3% on 4: four per GPU.
    choice = choose_fill(rates(p1=1000, p2=1900, p4=3400, p8=3500), {}, limit=16, limit_why="")
    assert choice.trials_per_gpu == 4 and choice.gpus_per_trial == 0.25 and choice.pack is None
    assert "1: 1,000, 2: 1,900, 4: 3,400, 8: 3,500" in choice.why and "more gained under 10%" in choice.why
    assert "2.0 GiB of device memory each" in choice.why


def test_a_step_that_gains_too_little_is_measured_against_the_last_that_paid():
    # 2 is under 1.1 x 1000, so 4 is compared with 1 (not with 2): 1200 >= 1100 pays.
    assert choose_fill(rates(p1=1000, p2=1050, p4=1200), {}, 16, "").trials_per_gpu == 4
    assert choose_fill(rates(p1=1000, p2=1050, p4=1090), {}, 16, "").trials_per_gpu == 1


def test_the_bound_caps_the_choice_and_is_said():
    choice = choose_fill(rates(p1=1000, p2=1900, p4=3400, p8=6000), {}, limit=2, limit_why="16 CPUs per GPU")
    assert choice.trials_per_gpu == 2 and "at most 2: 16 CPUs per GPU" in choice.why


def test_a_stack_is_taken_only_where_it_beat_the_processes_by_the_margin():
    processes = rates(p1=1000, p2=1900, p4=3400)
    faster = choose_fill(processes, {6: Measured(1, 3400 * FILL_MARGIN + 1, GIB), 12: Measured(1, 3000, GIB)}, 16, "")
    assert (faster.trials_per_gpu, faster.pack) == (1, 6) and "packs of 6, one per GPU" in faster.why
    assert gpu_fill.trial_images_per_s(faster) == pytest.approx(3400 * FILL_MARGIN + 1)
    slower = choose_fill(processes, {6: Measured(1, 3500, GIB)}, 16, "")
    assert (slower.trials_per_gpu, slower.pack) == (4, None) and "was not faster" in slower.why
    assert gpu_fill.trial_images_per_s(slower) == pytest.approx(3400 / 4)


def test_the_limit_is_the_tightest_of_memory_cpus_and_trials():
    assert process_limit(10 * GIB, 100 * GIB, 16, 1, 30) == (math.floor(MEMORY_SHARE * 100 / 10),
                                                            "device memory: 80% of 100 GiB free")
    assert process_limit(GIB, 100 * GIB, 16, 4, 30) == (4, "16 CPUs per GPU at 4 per trial")
    assert process_limit(GIB, 100 * GIB, 16, 1, 6) == (6, "the phase has 6 trials")
    assert process_limit(None, None, 16, 1, 30)[0] == 16  # on a CPU no memory bound is known
    assert process_limit(200 * GIB, 100 * GIB, 16, 1, 30)[0] == 1  # never fewer than one


# ----------------------------------------------------------------------------- measuring


def test_measuring_stops_where_doubling_stops_paying_or_the_bound_is_reached(tmp_path, monkeypatch):
    table = {1: 1000.0, 2: 1900.0, 4: 2000.0, 8: 2100.0, 16: 2200.0}
    calls = []

    def fake(probe, device, count):
        calls.append((probe.mode, probe.members, count))
        return Measured(count, table[count], GIB)

    monkeypatch.setattr(fill, "measure_processes", fake)
    probe = Probe("tinycnn", 10, (32, 32), 64, "bf16", 3)
    unbounded = lambda bytes_: (99, "")  # noqa: E731
    measured, stacks = fill.measure_fill(probe, torch.device("cpu"), unbounded, (6,), remember=tmp_path / "a.json")
    # 4 gained 5% on 2: 8 is not measured.
    assert [m.processes for m in measured] == [1, 2, 4] and stacks[6].processes == 1
    assert calls[-1] == ("stack", 6, 1)
    calls.clear()
    measured, _ = fill.measure_fill(probe, torch.device("cpu"), lambda bytes_: (2, ""), remember=tmp_path / "b.json")
    assert [m.processes for m in measured] == [1, 2]
    # Remembered: measuring again reads the file and starts nothing.
    calls.clear()
    again, _ = fill.measure_fill(probe, torch.device("cpu"), lambda bytes_: (2, ""), remember=tmp_path / "b.json",
                                 extra_bytes=5)
    assert [m.images_per_s for m in again] == [1000.0, 1900.0] and calls == []
    # What a trial adds (its data and cache) is this experiment's, not the remembered one's.
    assert [m.bytes_per_process for m in again] == [GIB + 5, GIB + 5]
    assert len(json.loads((tmp_path / "b.json").read_text())) == 2


@pytest.mark.slow
def test_workers_train_side_by_side_on_the_cpu(tmp_path):
    probe = Probe("tinycnn", 10, (32, 32), 16, "fp32", 2, steps=2)
    measured, stacks = fill.measure_fill(probe, torch.device("cpu"), lambda bytes_: (2, ""), stack_sizes=(4,),
                                         counts=(1, 2), remember=tmp_path / "fill.json")
    assert [m.processes for m in measured] == [1, 2]
    assert all(m.images_per_s > 0 and m.bytes_per_process is None for m in measured)  # no device memory on a CPU
    assert stacks[4].images_per_s > 0


@pytest.mark.slow
def test_a_worker_that_fails_is_reported_in_one_line(tmp_path):
    probe = Probe("nosuchnet", 10, (32, 32), 16, "fp32", 1, steps=1)
    with pytest.raises(RuntimeError, match="a GPU-fill measurement worker failed: .*nosuchnet"):
        fill.measure_processes(probe, torch.device("cpu"), 1)


# ----------------------------------------------------------------------------- what the sweep measures and applies


def quick(tmp_path, **values):
    return build_settings("x", "grid", "temperature", "quick", data_dir=str(tmp_path), train_subset=100, **values)


def test_levers_follow_the_flags_and_the_search(tmp_path):
    settings = quick(tmp_path)
    assert settings.pack_auto and gpu_fill.open_levers(settings, Resources()) == (True, True)
    assert gpu_fill.open_levers(quick(tmp_path, pack=0), Resources(gpus_per_trial=0.5)) == (False, False)
    assert gpu_fill.open_levers(quick(tmp_path, asha=True), Resources()) == (True, False)  # ASHA stops packs
    assert gpu_fill.open_levers(settings, Resources(gpus_per_trial=1)) == (False, True)
    methods = build_settings("x", "grid", "methods", "quick", data_dir=str(tmp_path), train_subset=100)
    assert gpu_fill.open_levers(methods, Resources())[1] is False  # only kd stacks
    # 3 seeds, 10 distilled configurations and the baseline: 33 students.
    assert settings.seeds + plan(settings)["sweep_trials"] == 33
    assert gpu_fill.stack_sizes(settings) == (6, 12)


def test_decide_measures_the_experiments_student_and_bounds_it(tmp_path, monkeypatch):
    settings = quick(tmp_path)
    seen = {}

    def fake(probe, device, limit_of, stack_sizes, counts, extra_bytes):
        seen.update(probe=probe, stack_sizes=stack_sizes, counts=counts, extra=extra_bytes, limit=limit_of(4 * GIB))
        return rates(p1=1000, p2=1900), {}

    monkeypatch.setattr(gpu_fill, "measure_fill", fake)
    monkeypatch.setattr(gpu_fill, "free_bytes", lambda device: 100 * GIB)
    data = gpu_fill.DataShape(10, (32, 32), 5000, 5000 * 3072)
    choice = gpu_fill.decide(settings, Resources(cpus_per_trial=2), data, cpus_per_gpu=16, device=torch.device("cpu"))
    probe = seen["probe"]
    # the trials' own precision: "auto" comes to the same on the measuring GPU as on theirs
    assert (probe.model, probe.members, probe.threads, probe.precision) == (settings.student, 3, 2, "auto")
    assert probe.batch_size == settings.student_config().effective_batch_size
    assert seen["stack_sizes"] == (6, 12) and seen["counts"] == fill.PROCESS_COUNTS
    assert seen["extra"] == 5000 * 3072 + settings.epochs * 5000 * 10 * 2
    assert seen["limit"] == (8, "16 CPUs per GPU at 2 per trial")  # before 11 trials and 20 by memory
    assert choice.trials_per_gpu == 2


def test_apply_sets_only_what_the_user_left_open(tmp_path):
    choice = FillChoice(4, None, [], [], "measured")
    settings, resources = gpu_fill.apply(quick(tmp_path), Resources(), choice)
    assert resources.gpus_per_trial == 0.25 and settings.pack == 0
    stacked = FillChoice(1, 12, [], [], "measured")
    settings, resources = gpu_fill.apply(quick(tmp_path), Resources(gpus_per_trial=0.5), stacked)
    assert resources.gpus_per_trial == 0.5 and settings.pack == 12
    settings, _ = gpu_fill.apply(quick(tmp_path, pack=0), Resources(gpus_per_trial=0.5), stacked)
    assert settings.pack == 0


@pytest.fixture
def gpu_dry_run(tmp_path, monkeypatch, mini_data_dir):
    """The quick grid's dry run on a machine that reports one GPU, with `decide` replaced by the given
    function (the measurement needs a GPU); its speeds timed with one thread (see test_tune_cli)."""
    from kdtune.engine import speed
    from kdtune.sweep.estimate import dry_run

    measure = speed.measure
    monkeypatch.setattr(speed, "measure", lambda model, batch_size, splits, device, threads, **kw:
                        measure(model, batch_size, splits, device, 1, **kw))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    def run(decide) -> str:
        monkeypatch.setattr(gpu_fill, "decide", decide)
        settings = build_settings("x", "grid", "temperature", "quick", teacher="tinycnn", data_dir=str(mini_data_dir),
                                  train_subset=200, val_size=100)
        return dry_run(settings, Resources(teacher_store=str(tmp_path / "teachers")))

    return run


@pytest.mark.slow
def test_the_dry_run_on_a_gpu_machine_shows_the_choice_and_estimates_with_it(gpu_dry_run):
    choice = FillChoice(4, None, [{"processes": 1, "images_per_s": 3000.0, "bytes_per_process": GIB},
                                  {"processes": 4, "images_per_s": 10000.0, "bytes_per_process": GIB}], [],
                        "students' images/s summed ...")
    out = gpu_dry_run(lambda *args, **kwargs: choice)
    assert "GPU fill (measured): 4 trials per GPU (--gpus-per-trial 0.25): students' images/s summed" in out
    assert "student 2500 img/s training" in out  # 10,000 shared by 4 trials


@pytest.mark.slow
def test_a_failed_measurement_in_the_dry_run_is_a_note(gpu_dry_run):
    def fails(*args, **kwargs):
        raise RuntimeError("a GPU-fill measurement worker failed: CUDA error: out of memory")

    out = gpu_dry_run(fails)
    assert "note: the GPU-fill measurement failed (a GPU-fill measurement worker failed: CUDA error" in out
    assert "estimated wall clock" in out


def test_the_report_says_how_trials_filled_their_gpu(tmp_path):
    from kdtune.report.summary import fill_line

    assert fill_line({}) is None
    shared = choose_fill(rates(p1=1000, p2=1900, p4=3400, p8=3500), {}, 16, "").to_dict()
    assert fill_line({"gpu_fill": shared}).startswith("GPU fill, measured when the sweep started: 4 trials per GPU — ")
    stacked = FillChoice(1, 12, [], [], "stacked").to_dict()
    assert fill_line({"gpu_fill": stacked}) == ("GPU fill, measured when the sweep started: packs of 12 students, "
                                                "one per GPU — stacked.")
