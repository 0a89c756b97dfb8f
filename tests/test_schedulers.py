"""The baseline as a trial of the sweep's experiment: ASHA never stops it, a grid is given as its points."""

from __future__ import annotations

from dataclasses import dataclass, field

from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from kdtune.sweep.schedulers import BaselineKeepingASHA
from kdtune.sweep.searchers import GridPoints
from kdtune.sweep.settings import BASELINE


@dataclass(eq=False)
class FakeTrial:
    trial_id: str
    config: dict = field(default_factory=dict)


def asha() -> BaselineKeepingASHA:
    scheduler = BaselineKeepingASHA(time_attr="training_iteration", max_t=8, grace_period=1, reduction_factor=2)
    assert scheduler.set_search_properties("val_acc", "max")
    return scheduler


def report(scheduler, trial, epoch: int, acc: float) -> str:
    return scheduler.on_trial_result(None, trial, {"training_iteration": epoch, "val_acc": acc})


def test_asha_stops_a_poor_sweep_trial_but_never_the_baseline():
    scheduler = asha()
    good = FakeTrial("good", {"alpha": 0.5, "temperature": 4.0})
    poor = FakeTrial("poor", {"alpha": 0.5, "temperature": 8.0})
    baseline = FakeTrial("base", {**BASELINE, "seeds": [0, 1]})
    for trial in (good, baseline, poor):
        scheduler.on_trial_add(None, trial)
    assert report(scheduler, good, 1, 0.9) == TrialScheduler.CONTINUE
    # The baseline is far worse than anything at every rung (no distillation), and still runs on.
    assert [report(scheduler, baseline, epoch, 0.01) for epoch in range(1, 9)] == [TrialScheduler.CONTINUE] * 8
    # The same result from a sweep trial is stopped at the first rung: the comparison above is not vacuous.
    assert report(scheduler, poor, 1, 0.01) == TrialScheduler.STOP
    # The baseline never entered a rung: the first rung's cutoff (its median) is over {0.9, 0.01}, so 0.3 is
    # stopped; with the baseline's 0.01 recorded too, the median would be 0.01 and 0.3 would go on.
    mid = FakeTrial("mid", {"alpha": 0.9, "temperature": 2.0})
    scheduler.on_trial_add(None, mid)
    assert report(scheduler, mid, 1, 0.3) == TrialScheduler.STOP
    scheduler.on_trial_complete(None, baseline, {"training_iteration": 8, "val_acc": 0.01})
    scheduler.on_trial_remove(None, baseline)


def test_grid_points_are_suggested_in_order_once_each_and_a_restored_grid_goes_on(tmp_path):
    points = [BASELINE, {"alpha": 0.5, "temperature": 2.0}, {"alpha": 0.5, "temperature": 8.0}]
    grid = GridPoints(points)
    assert grid.set_search_properties("val_acc", "max", {"seeds": [0, 1]})
    assert [grid.suggest("a"), grid.suggest("b")] == points[:2]
    grid.save(str(tmp_path / "state.pkl"))
    restored = GridPoints([])
    restored.restore(str(tmp_path / "state.pkl"))
    assert [restored.suggest("c"), restored.suggest("d")] == [points[2], Searcher.FINISHED]
    assert grid.suggest("c") == points[2] and grid.suggest("d") == Searcher.FINISHED
