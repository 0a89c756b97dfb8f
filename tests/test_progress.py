"""Progress output: a live bar on a terminal, a few plain timestamped lines in a log; no Ray, no sleeping."""

from __future__ import annotations

import io
import re

import pytest
import torch
from helpers import synthetic_splits

from kdtune.engine.config import RunConfig
from kdtune.engine.progress import LogLines, duration, progress_bar
from kdtune.engine.train import train

LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] \S.*: ")


class FakeClock:
    """Seconds that pass only when the test says so."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def steady_run(total: int, seconds: float, initial: int = 0) -> list[str]:
    """The lines of a phase of `total` steps taking `seconds` at a steady rate, on a non-terminal stream."""
    clock, stream = FakeClock(), io.StringIO()
    bar = LogLines(total, "teacher tinycnn", "step", initial=initial, file=stream, clock=clock)
    for _ in range(initial, total):
        clock.now += seconds / (total - initial)
        bar.update(1)
    bar.close()
    return stream.getvalue().splitlines()


def expected_between(total: int, seconds: float) -> int:
    """Lines between start and end by the rule: a line once a tenth of the steps AND a minute have passed since the
    last; at a steady rate every max(tenth, a minute's steps) steps, the last step excluded (the end line)."""
    per_minute = total * 60 / seconds
    gap = max(-(-total // 10), -(-per_minute // 1))  # both rounded up to whole steps
    return int((total - 1) // gap)


def assert_plain(lines: list[str]) -> None:
    text = "\n".join(lines)
    assert "\r" not in text and "\x1b" not in text
    assert all(LINE.match(line) for line in lines), lines
    assert len(set(lines)) == len(lines), lines


@pytest.mark.parametrize("total, seconds", [(1000, 30 * 60), (1000, 250), (1000, 30), (70, 7 * 3600), (3, 600)])
def test_a_line_per_tenth_or_per_minute_whichever_is_rarer(total, seconds):
    lines = steady_run(total, seconds)
    assert_plain(lines)
    assert "started, step 0/" in lines[0] and f"done, step {total}/{total} (100%)" in lines[-1]
    assert len(lines) - 2 == expected_between(total, seconds)


def test_thirty_minutes_of_a_thousand_steps_read_well():
    lines = steady_run(1000, 30 * 60)
    assert len(lines) == 2 + 9  # 10% (100 steps, 3 minutes) is the rarer: lines at 10%, ..., 90%
    assert lines[0].endswith("teacher tinycnn: started, step 0/1000 (0%)")
    assert lines[1].endswith("teacher tinycnn: step 100/1000 (10%), 3m00s elapsed, ~27m00s left")
    assert lines[-1].endswith("teacher tinycnn: done, step 1000/1000 (100%) in 30m00s")


def test_a_resumed_phase_starts_where_it_was_and_estimates_from_its_own_rate():
    lines = steady_run(1000, 30 * 60, initial=500)
    assert_plain(lines)
    assert lines[0].endswith("resumed at step 500/1000 (50%)")
    # 500 steps in 30 minutes: 100 steps take 6 minutes.
    assert lines[1].endswith("step 600/1000 (60%), 6m00s elapsed, ~24m00s left")


def test_a_phase_closed_before_its_total_says_where_it_ended():
    clock, stream = FakeClock(), io.StringIO()
    bar = LogLines(12, "sweep: trial epochs", "epoch", file=stream, clock=clock)
    bar.set_description("sweep: trial epochs (ASHA)")
    clock.now += 95
    bar.update(5)
    bar.close()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert_plain(lines)
    assert [line.split("] ", 1)[1] for line in lines] == [
        "sweep: trial epochs: started, epoch 0/12 (0%)",
        "sweep: trial epochs (ASHA): epoch 5/12 (41%), 1m35s elapsed, ~2m13s left",
        "sweep: trial epochs (ASHA): ended at epoch 5/12 (41%) after 1m35s",
    ]


def test_durations():
    assert [duration(s) for s in (0, 59.4, 72, 3599, 3600 + 125)] == ["0s", "59s", "1m12s", "59m59s", "1h02m"]


def test_off_a_terminal_progress_is_plain_lines(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    bar = progress_bar(True, 8, "train", initial=4)
    assert isinstance(bar, LogLines)
    bar.update(4)
    bar.close()
    assert_plain(stream.getvalue().splitlines())


def test_on_a_terminal_progress_is_a_live_bar(monkeypatch):
    from tqdm import tqdm

    stream = Terminal()
    monkeypatch.setattr("sys.stderr", stream)
    bar = progress_bar(True, 8, "train", initial=4)
    assert isinstance(bar, tqdm) and bar.n == 4
    bar.update(4)
    bar.close()
    assert "\r" in stream.getvalue()


def test_the_training_loop_writes_only_plain_lines_off_a_terminal(capsys):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = RunConfig(model="tinycnn", epochs=2, batch_size=64)
        train(config, synthetic_splits(), torch.device("cpu"), progress=True, desc="teacher tinycnn")
    finally:
        torch.set_num_threads(before)
    lines = capsys.readouterr().err.splitlines()
    assert_plain(lines)
    # Seconds of training: neither a tenth and a minute pass in between, so a start line and an end line.
    assert len(lines) == 2
    assert lines[0].endswith("teacher tinycnn: started, step 0/8 (0%)")
    assert re.search(r"teacher tinycnn \(loss \d\.\d{3}, val_acc \d\.\d{3}\): done, step 8/8 \(100%\) in \d+s$",
                     lines[1])
