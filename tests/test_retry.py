"""Tests for taskqueue.retry: Backoff, decide() and check_retry_on()."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError
from typing import List

import pytest

from taskqueue.errors import Retry
from taskqueue.retry import Backoff, RetryPolicy, check_retry_on, decide


class StubRandom:
    """A jitter source that returns the given values in turn and counts calls."""

    def __init__(self, *values: float) -> None:
        self.values: List[float] = list(values)
        self.calls = 0

    def random(self) -> float:
        self.calls += 1
        return self.values.pop(0)


class NoRandom:
    """A jitter source that must not be asked."""

    def random(self) -> float:
        raise AssertionError("rng asked for a delay that needs no jitter")


# -- Backoff ----------------------------------------------------------------------


def test_backoff_defaults():
    backoff = Backoff()
    assert (backoff.base, backoff.factor, backoff.max, backoff.jitter) == (0.1, 2.0, 30.0, True)


def test_backoff_is_frozen():
    with pytest.raises(FrozenInstanceError):
        Backoff().base = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("base, factor, cap", [
    (0.5, 3.0, 10.0),
    (0.1, 2.0, 30.0),
    (1, 2, 100),          # ints are accepted
    (2.0, 1.0, 5.0),      # factor 1: constant
    (7.0, 2.0, 3.0),      # base above the cap: the cap wins from the first retry
    (0.0, 2.0, 30.0),
])
def test_backoff_delay_is_exactly_the_formula_without_jitter(base, factor, cap):
    backoff = Backoff(base=base, factor=factor, max=cap, jitter=False)
    for n in range(1, 40):
        expected = min(cap, base * factor ** (n - 1))
        delay = backoff.delay(n, NoRandom())
        assert delay == expected, n
        assert type(delay) is float


def test_backoff_delay_known_values():
    backoff = Backoff(base=0.5, factor=3.0, max=10.0, jitter=False)
    assert [backoff.delay(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]


def test_full_jitter_scales_the_ceiling_by_the_injected_random_number():
    backoff = Backoff(base=1.0, factor=2.0, max=5.0, jitter=True)
    rng = StubRandom(0.25, 0.5, 0.0, 0.75, 0.999)
    assert backoff.delay(1, rng) == 0.25      # ceiling 1
    assert backoff.delay(2, rng) == 1.0       # ceiling 2
    assert backoff.delay(3, rng) == 0.0       # ceiling 4
    assert backoff.delay(4, rng) == 3.75      # ceiling min(5, 8) = 5
    assert backoff.delay(9, rng) == 5.0 * 0.999
    assert rng.calls == 5


def test_full_jitter_does_not_draw_when_the_ceiling_is_zero():
    assert Backoff(base=0.0, jitter=True).delay(3, NoRandom()) == 0.0


def test_full_jitter_without_an_rng_stays_within_the_ceiling():
    backoff = Backoff(base=1.0, factor=2.0, max=4.0, jitter=True)
    delays = [backoff.delay(3) for _ in range(200)]
    assert all(0.0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 1  # actually random


def test_constant_backoff():
    backoff = Backoff.constant(2.5)
    assert backoff.jitter is False
    assert [backoff.delay(n, NoRandom()) for n in (1, 2, 10, 10_000)] == [2.5] * 4
    assert Backoff.constant(0).delay(5) == 0.0


@pytest.mark.parametrize("seconds, error", [(-1, ValueError), (math.nan, ValueError),
                                            (math.inf, ValueError), ("1", TypeError),
                                            (True, TypeError)])
def test_constant_backoff_validates_seconds(seconds, error):
    with pytest.raises(error, match=r"\bseconds\b"):
        Backoff.constant(seconds)


def test_no_backoff_retries_at_once():
    backoff = Backoff.none()
    assert backoff.jitter is False
    assert [backoff.delay(n, NoRandom()) for n in (1, 2, 50, 10**9)] == [0.0] * 4


@pytest.mark.parametrize("retry", [1025, 10_000, 10**6, 10**18])
def test_huge_retry_numbers_hit_the_cap_without_overflow(retry):
    assert Backoff(jitter=False).delay(retry) == 30.0
    assert Backoff(jitter=True).delay(retry, StubRandom(0.5)) == 15.0
    assert Backoff(base=3.0, factor=1.0, max=5.0, jitter=False).delay(retry) == 3.0


def test_huge_retry_numbers_with_an_int_factor_hit_the_cap():
    assert Backoff(base=1, factor=2, max=60, jitter=False).delay(100_000) == 60.0


def test_zero_base_stays_zero_for_huge_retry_numbers():
    backoff = Backoff(base=0.0, factor=2.0, max=30.0, jitter=False)
    assert backoff.delay(1024) == 0.0
    assert backoff.delay(1025) == 0.0  # 2.0 ** 1024 overflows a float


@pytest.mark.parametrize("retry, error", [(0, ValueError), (-3, ValueError),
                                          (1.0, TypeError), (True, TypeError)])
def test_delay_validates_the_retry_number(retry, error):
    with pytest.raises(error, match=r"\bretry\b"):
        Backoff().delay(retry)


@pytest.mark.parametrize("field", ["base", "max"])
@pytest.mark.parametrize("value, error", [(-0.5, ValueError), (math.nan, ValueError),
                                          (math.inf, ValueError), (-math.inf, ValueError),
                                          ("1", TypeError), (None, TypeError),
                                          (True, TypeError)])
def test_backoff_validates_base_and_max_naming_them(field, value, error):
    with pytest.raises(error, match=rf"\b{field}\b"):
        Backoff(**{field: value})


@pytest.mark.parametrize("value, error", [(0.99, ValueError), (0, ValueError),
                                          (-2.0, ValueError), (math.nan, ValueError),
                                          (math.inf, ValueError), ("2", TypeError),
                                          (True, TypeError)])
def test_backoff_validates_factor_naming_it(value, error):
    with pytest.raises(error, match=r"\bfactor\b"):
        Backoff(factor=value)


@pytest.mark.parametrize("value", [1, 0, "yes", None])
def test_backoff_refuses_a_non_bool_jitter_naming_it(value):
    with pytest.raises(TypeError, match=r"\bjitter\b"):
        Backoff(jitter=value)


def test_backoff_accepts_the_edges():
    Backoff(base=0, factor=1, max=0, jitter=False)
    Backoff(base=0.0, factor=1.0, max=0.0, jitter=True)


# -- decide -------------------------------------------------------------------------


def policy(retries=2, backoff=None, retry_on=(Exception,), rng=None) -> RetryPolicy:
    return RetryPolicy(retries, backoff or Backoff(base=1.0, factor=2.0, max=60.0,
                                                   jitter=False), retry_on, rng)


def test_decide_retries_until_the_retries_are_used_up():
    p = policy(retries=3)
    assert [decide(p, ValueError(), attempt) for attempt in (1, 2, 3, 4, 5)] == \
        [1.0, 2.0, 4.0, None, None]


def test_decide_with_no_retries_gives_up_at_once():
    assert decide(policy(retries=0), ValueError(), 1) is None


def test_decide_gives_up_on_an_exception_outside_retry_on():
    p = policy(retry_on=(OSError,))
    assert decide(p, ValueError(), 1) is None
    assert decide(p, ConnectionError(), 1) == 1.0  # a subclass of OSError


def test_decide_uses_the_policy_rng_for_jitter():
    rng = StubRandom(0.5)
    p = policy(backoff=Backoff(base=1.0, factor=3.0, max=60.0, jitter=True), rng=rng)
    assert decide(p, ValueError(), 2) == 1.5  # ceiling 3, drawn at 0.5
    assert rng.calls == 1


def test_decide_retries_retry_even_outside_retry_on():
    p = policy(retry_on=(OSError,))
    assert decide(p, Retry(), 1) == 1.0
    assert decide(p, Retry(), 2) == 2.0
    assert decide(policy(retry_on=()), Retry(), 1) == 1.0


def test_decide_honours_the_delay_a_retry_asks_for():
    p = policy(retry_on=(OSError,))
    assert decide(p, Retry(delay=7), 1) == 7.0
    assert decide(p, Retry(delay=0), 2) == 0.0


def test_decide_does_not_retry_a_retry_once_retries_are_used_up():
    p = policy(retries=1)
    assert decide(p, Retry(), 2) is None
    assert decide(p, Retry(delay=5), 2) is None


def test_decide_with_empty_retry_on_retries_only_retry():
    p = policy(retry_on=())
    assert decide(p, Exception(), 1) is None
    assert decide(p, Retry(delay=3), 1) == 3.0


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(1), GeneratorExit()])
def test_decide_does_not_retry_base_exceptions_under_the_default(exc):
    assert decide(policy(retry_on=(Exception,)), exc, 1) is None


def test_decide_retries_a_base_exception_the_policy_names():
    assert decide(policy(retry_on=(KeyboardInterrupt,)), KeyboardInterrupt(), 1) == 1.0


# -- check_retry_on ----------------------------------------------------------------------


def test_check_retry_on_wraps_a_class_and_keeps_a_tuple():
    assert check_retry_on(ValueError) == (ValueError,)
    assert check_retry_on((ValueError, KeyboardInterrupt)) == (ValueError, KeyboardInterrupt)
    assert check_retry_on(()) == ()


@pytest.mark.parametrize("value", [[ValueError], {ValueError}, "ValueError", ValueError(),
                                   int, (ValueError, int), (ValueError, "x"), None])
def test_check_retry_on_refuses_anything_else(value):
    with pytest.raises(TypeError, match=r"\bretry_on\b"):
        check_retry_on(value)


def test_check_retry_on_names_the_parameter_it_is_told():
    with pytest.raises(TypeError, match=r"\bdefault_retry_on\b"):
        check_retry_on([OSError], name="default_retry_on")
