"""Tests for taskqueue.validate, and for every public number going through it.

A number that is finite but too large for the platform's waits (about
9.2e9 s) or for a float at all (10**400) must be refused where it is given,
with a ValueError naming the parameter: accepted, it used to kill the timer
thread later (no delay, retry, periodic run or time limit fired again), or
surface as an OverflowError that names nothing.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable

import pytest

from taskqueue import Backoff, Retry, Task, TaskQueue
from taskqueue import validate
from taskqueue.validate import MAX_SECONDS

HUGE = 10 ** 400
TOO_LONG = 1e10  # finite, and longer than threading.TIMEOUT_MAX


def test_max_seconds_is_the_longest_wait_a_lock_accepts() -> None:
    free = threading.Lock()
    assert free.acquire(timeout=MAX_SECONDS)  # accepted (and free, so at once)
    free.release()
    with pytest.raises(OverflowError):
        free.acquire(timeout=MAX_SECONDS * 2)  # what the bound protects the timer from


@pytest.mark.parametrize("check", [validate.seconds, validate.optional_seconds,
                                   validate.optional_positive_seconds])
@pytest.mark.parametrize("value", [HUGE, TOO_LONG, math.inf, math.nan, -HUGE])
def test_durations_out_of_range_are_a_value_error_naming_the_parameter(
        check: Callable[[str, Any], Any], value: Any) -> None:
    with pytest.raises(ValueError, match=r"^delay must be"):
        check("delay", value)


def test_a_huge_int_is_shown_briefly_in_the_message() -> None:
    with pytest.raises(ValueError) as caught:
        validate.seconds("delay", HUGE)
    assert "an int of 401 digits" in str(caught.value)
    assert len(str(caught.value)) < 200


def test_the_largest_accepted_duration_is_max_seconds() -> None:
    assert validate.seconds("delay", MAX_SECONDS) == MAX_SECONDS
    assert validate.seconds("delay", 2 ** 33) == float(2 ** 33)


def test_wait_seconds_cuts_long_waits() -> None:
    assert validate.wait_seconds(1.5) == 1.5
    assert validate.wait_seconds(1e300) == MAX_SECONDS


@pytest.mark.parametrize("value", [HUGE, TOO_LONG])
@pytest.mark.parametrize("name, make", [
    ("delay", lambda v: Task(print, delay=v)),
    ("time_limit", lambda v: Task(print, time_limit=v)),
    ("submit_timeout", lambda v: TaskQueue(submit_timeout=v)),
    ("time_limit", lambda v: TaskQueue(time_limit=v)),
    ("time_limit_grace", lambda v: TaskQueue(time_limit_grace=v)),
    ("base", lambda v: Backoff(base=v)),
    ("max", lambda v: Backoff(max=v)),
    ("seconds", lambda v: Backoff.constant(v)),
    ("delay", lambda v: Retry(delay=v)),
])
def test_constructors_refuse_numbers_too_large_naming_them(name: str, make: Callable[[Any], Any],
                                                          value: Any) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        make(value)


def test_a_huge_backoff_factor_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"^factor must be"):
        Backoff(factor=HUGE)


@pytest.mark.parametrize("value", [HUGE, TOO_LONG])
def test_queue_methods_refuse_too_large_numbers_before_doing_anything(
        make_queue: Callable[..., TaskQueue], value: Any) -> None:
    queue = make_queue(workers=1)
    with pytest.raises(ValueError, match=r"^interval must be"):
        queue.every(value, print)
    with pytest.raises(ValueError, match=r"^timeout must be"):
        queue.join(value)
    with pytest.raises(ValueError, match=r"^timeout must be"):
        queue.map(abs, [1], timeout=value)
    with pytest.raises(ValueError, match=r"^timeout must be"):
        queue.shutdown(timeout=value)
    # shutdown refused its timeout before closing anything: the queue still works
    assert queue.submit(abs, -3).result(timeout=10) == 3
    assert queue.stats().submitted == 1
