"""Tests for taskqueue.validate, and for every public number going through it.

A number that is finite but longer than the platform's waits allow (about
9.2e9 s) used to be accepted and then kill the timer thread (no delay,
retry, periodic run or time limit fired again); one too large for a float
at all (10**400) raised an OverflowError that named nothing. Now the first
is clamped to MAX_SECONDS where it is given, and the second is refused with
a ValueError naming the parameter.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable

import pytest

from conftest import WAIT
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
        free.acquire(timeout=MAX_SECONDS * 2)  # what the clamp protects the timer from


@pytest.mark.parametrize("check", [validate.seconds, validate.optional_seconds,
                                   validate.optional_positive_seconds])
@pytest.mark.parametrize("value", [HUGE, math.inf, math.nan, -HUGE, -math.inf])
def test_numbers_that_are_not_finite_are_a_value_error_naming_the_parameter(
        check: Callable[[str, Any], Any], value: Any) -> None:
    with pytest.raises(ValueError, match=r"^delay must be"):
        check("delay", value)


@pytest.mark.parametrize("check", [validate.seconds, validate.optional_seconds,
                                   validate.optional_positive_seconds])
def test_a_finite_duration_longer_than_a_lock_accepts_is_clamped(
        check: Callable[[str, Any], Any]) -> None:
    assert check("delay", TOO_LONG) == MAX_SECONDS
    assert check("delay", 1e300) == MAX_SECONDS
    assert check("delay", 2 ** 40) == MAX_SECONDS
    assert check("delay", 2 ** 33) == float(2 ** 33)  # below the bound: as given


def test_a_huge_int_is_shown_briefly_in_the_message() -> None:
    with pytest.raises(ValueError) as caught:
        validate.seconds("delay", HUGE)
    assert "an int of 401 digits" in str(caught.value)
    assert len(str(caught.value)) < 200


def test_wait_seconds_cuts_long_waits() -> None:
    assert validate.wait_seconds(1.5) == 1.5
    assert validate.wait_seconds(1e300) == MAX_SECONDS


CONSTRUCTORS = [
    ("delay", lambda v: Task(print, delay=v), lambda made: made.delay),
    ("time_limit", lambda v: Task(print, time_limit=v), lambda made: made.time_limit),
    ("submit_timeout", lambda v: TaskQueue(submit_timeout=v), None),
    ("time_limit", lambda v: TaskQueue(time_limit=v), None),
    ("time_limit_grace", lambda v: TaskQueue(time_limit_grace=v), None),
    ("base", lambda v: Backoff(base=v), lambda made: made.base),
    ("max", lambda v: Backoff(max=v), lambda made: made.max),
    ("seconds", lambda v: Backoff.constant(v), lambda made: made.max),
    ("delay", lambda v: Retry(delay=v), lambda made: made.delay),
]


@pytest.mark.parametrize("name, make, read", CONSTRUCTORS)
def test_constructors_refuse_a_huge_int_naming_it(name: str, make: Callable[[Any], Any],
                                                 read: Any) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        make(HUGE)


@pytest.mark.parametrize("name, make, read", CONSTRUCTORS)
def test_constructors_clamp_a_finite_duration_that_is_too_long(
        name: str, make: Callable[[Any], Any], read: Any) -> None:
    made = make(TOO_LONG)
    if read is not None:
        assert read(made) == MAX_SECONDS
    if isinstance(made, TaskQueue):
        made.shutdown()


def test_a_huge_backoff_factor_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"^factor must be"):
        Backoff(factor=HUGE)


def test_queue_methods_refuse_a_huge_int_before_doing_anything(
        make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1)
    with pytest.raises(ValueError, match=r"^interval must be"):
        queue.every(HUGE, print)
    with pytest.raises(ValueError, match=r"^timeout must be"):
        queue.join(HUGE)
    with pytest.raises(ValueError, match=r"^timeout must be"):
        queue.map(abs, [1], timeout=HUGE)
    with pytest.raises(ValueError, match=r"^timeout must be"):
        queue.shutdown(timeout=HUGE)
    # shutdown refused its timeout before closing anything: the queue still works
    assert queue.submit(abs, -3).result(timeout=WAIT) == 3
    assert queue.stats().submitted == 1


@pytest.mark.timeout(30)
def test_queue_methods_take_timeouts_longer_than_a_lock_accepts(
        make_queue: Callable[..., TaskQueue]) -> None:
    # They used to raise OverflowError (shutdown after closing the queue).
    queue = make_queue(workers=1, submit_timeout=TOO_LONG)
    assert queue.submit(abs, -3).result(timeout=TOO_LONG) == 3
    assert queue.join(TOO_LONG)
    assert list(queue.map(abs, [-1, -2], timeout=TOO_LONG)) == [1, 2]
    periodic = queue.every(TOO_LONG, print)
    periodic.cancel()
    queue.shutdown(timeout=TOO_LONG)
    assert queue.stats().succeeded == 3


@pytest.mark.timeout(30)
def test_a_delay_centuries_long_does_not_stop_other_delays_retries_or_time_limits(
        make_queue: Callable[..., TaskQueue]) -> None:
    # The reproducer of the Hardening issue: the far task used to kill the
    # scheduler thread, and with it every later delay, retry and time limit.
    queue = make_queue(workers=2)
    far = queue.submit(Task(print, ("far future",), delay=TOO_LONG))
    limited = queue.submit(Task(lambda: "ok", time_limit=TOO_LONG))
    soon = queue.submit(Task(lambda: "ran", delay=0.05))
    assert soon.result(timeout=WAIT) == "ran"
    assert limited.result(timeout=WAIT) == "ok"
    assert far.state.value == "scheduled"
    queue.shutdown(cancel_futures=True)
    assert far.cancelled()
