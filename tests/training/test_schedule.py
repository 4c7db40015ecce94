"""Save/eval schedules: log-spacing, endpoints, explicit lists and errors."""

from __future__ import annotations

import math

import pytest

from grokscope.training.schedule import (ScheduleError, eval_schedule, every_steps, log_steps,
                                         parse_schedule)


@pytest.mark.parametrize("n,steps", [(100, 6000), (100, 100000), (20, 1000), (50, 300), (2, 10), (10, 10**7)])
def test_log_steps_properties(n: int, steps: int) -> None:
    s = log_steps(n, steps)
    assert s[0] == 0 and s[-1] == steps
    assert s == sorted(set(s)) and all(isinstance(v, int) for v in s)
    assert n <= len(s) <= n + 3, (n, len(s))
    # log-spaced: past the dense integer start, consecutive ratios are nearly constant
    tail = [v for v in s if v >= 50]
    if len(tail) > 5:
        ratios = [b / a for a, b in zip(tail, tail[1:])]
        assert max(ratios) / min(ratios) < 1.25


def test_log_steps_small_and_degenerate() -> None:
    assert log_steps(100, 30) == list(range(31))  # more points than steps: every step
    assert log_steps(5, 0) == [0]
    with pytest.raises(ScheduleError):
        log_steps(1, 100)


def test_every_and_explicit() -> None:
    assert every_steps(25, 100) == [0, 25, 50, 75, 100]
    assert every_steps(30, 100) == [0, 30, 60, 90, 100]
    assert parse_schedule("every:30", 100) == [0, 30, 60, 90, 100]
    assert parse_schedule("30", 100) == [0, 30, 60, 90, 100]
    assert parse_schedule(30, 100) == [0, 30, 60, 90, 100]
    assert parse_schedule("1,10,100", 1000) == [0, 1, 10, 100, 1000]
    assert parse_schedule("50, 5,5", 60) == [0, 5, 50, 60]
    assert parse_schedule([7, 3], 9) == [0, 3, 7, 9]
    assert parse_schedule("log:4", 1000) == log_steps(4, 1000)


@pytest.mark.parametrize("spec", ["log:x", "nope:3", "every:0", "1,a,3", "1,2000", "-1,3", "log:1"])
def test_bad_specs_raise(spec: str) -> None:
    with pytest.raises(ScheduleError, match=r"schedule|log:N|every:K|K >= 1"):
        parse_schedule(spec, 1000)


def test_eval_schedule_contains_saves() -> None:
    saves = parse_schedule("log:10", 1000)
    ev = eval_schedule(saves, "every:100", 1000)
    assert set(saves) <= set(ev)
    assert set(range(0, 1001, 100)) <= set(ev)
    assert eval_schedule(saves, None, 1000) == saves
    assert math.isclose(len(eval_schedule([0, 5], 2, 5)), 4)  # 0, 2, 4, 5
