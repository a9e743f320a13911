"""Retry policy: how long to wait, and whether to try again at all.

Everything here is pure: :meth:`Backoff.delay` returns a number and never
sleeps, and :func:`decide` maps (policy, exception, attempt) to "retry after
so many seconds" or "give up". The worker asks, the scheduler waits.
Randomness is injected (``rng=``) so that jitter can be tested exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Protocol

from . import validate
from .errors import Retry, TimeLimitExceeded

__all__ = ["Backoff", "RetryPolicy", "decide", "check_retry_on"]


class RandomSource(Protocol):
    """Anything with ``random() -> float`` in [0, 1), like ``random.Random``."""

    def random(self) -> float:
        """Return the next number in [0, 1)."""
        ...


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with optional full jitter.

    The delay before retry ``n`` (1 for the first retry) is
    ``min(max, base * factor ** (n - 1))``; with ``jitter`` it is drawn
    uniformly between 0 and that ("full jitter"), which spreads retries of
    many tasks that failed together.

    Args:
        base: delay before the first retry, in seconds (>= 0).
        factor: growth per retry (>= 1).
        max: the cap on any one delay, in seconds (>= 0).
        jitter: draw each delay uniformly from [0, computed delay].

    Raises:
        TypeError: a parameter is not a number (``jitter``: not a bool).
        ValueError: a parameter is out of range, NaN or infinite. A delay
            longer than ``validate.MAX_SECONDS`` (about 292 years) is clamped to it.
    """

    base: float = 0.1
    """Delay before the first retry, in seconds."""
    factor: float = 2.0
    """Growth of the delay per retry."""
    max: float = 30.0
    """Cap on any one delay, in seconds."""
    jitter: bool = True
    """Whether each delay is drawn uniformly from [0, computed delay]."""

    def __post_init__(self) -> None:
        base, max_ = validate.seconds("base", self.base), validate.seconds("max", self.max)
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)):
            raise TypeError(f"factor must be a number, got {validate.shown(self.factor)}")
        try:
            finite = math.isfinite(self.factor)
        except OverflowError:  # an int too large for a float
            finite = False
        if not finite or self.factor < 1:
            raise ValueError(f"factor must be a finite number >= 1, got "
                             f"{validate.shown(self.factor)}")
        if not isinstance(self.jitter, bool):
            raise TypeError(f"jitter must be a bool, got {self.jitter!r}")
        # Floats, so that factor ** n overflows at once instead of building
        # an enormous int for a large retry number.
        for name, value in (("base", base), ("factor", float(self.factor)), ("max", max_)):
            object.__setattr__(self, name, value)

    @classmethod
    def constant(cls, seconds: float) -> Backoff:
        """Return a backoff that waits exactly ``seconds`` before every retry.

        Raises:
            TypeError: ``seconds`` is not a number.
            ValueError: ``seconds`` is negative, NaN or infinite.
        """
        validate.seconds("seconds", seconds)
        return cls(base=seconds, factor=1.0, max=seconds, jitter=False)

    @classmethod
    def none(cls) -> Backoff:
        """Return a backoff that retries at once (a delay of 0)."""
        return cls(base=0.0, factor=1.0, max=0.0, jitter=False)

    def delay(self, retry: int, rng: RandomSource | None = None) -> float:
        """Return the seconds to wait before retry number ``retry`` (from 1).

        Args:
            retry: which retry this is; 1 for the first.
            rng: source of jitter; the ``random`` module when omitted.

        Raises:
            ValueError: ``retry`` is below 1.
        """
        validate.whole_number("retry", retry, minimum=1)
        try:
            ceiling = min(self.max, self.base * self.factor ** (retry - 1))
        except OverflowError:  # factor ** n past the float range: the cap applies
            ceiling = self.max if self.base > 0 else 0.0
        if self.jitter and ceiling > 0:
            return ceiling * (rng or random).random()
        return float(ceiling)


def check_retry_on(value: object, name: str = "retry_on") -> tuple[type[BaseException], ...]:
    """Return ``value`` as a tuple of exception classes.

    A single class is accepted and wrapped in a tuple.

    Raises:
        TypeError: ``value`` holds something that is not an exception class.
    """
    classes = (value,) if isinstance(value, type) else value
    if not isinstance(classes, tuple) or not all(
            isinstance(c, type) and issubclass(c, BaseException) for c in classes):
        raise TypeError(f"{name} must be an exception class or a tuple of them, got {value!r}")
    return classes


class RetryPolicy:
    """The retry settings in force for one task: how many, which, how long.

    Args:
        retries: how many times a failed task may be tried again (>= 0).
        backoff: the delays between attempts.
        retry_on: exception classes that are worth a retry.
        rng: source of jitter for ``backoff``.
    """

    __slots__ = ("retries", "backoff", "retry_on", "rng")

    def __init__(
        self,
        retries: int,
        backoff: Backoff,
        retry_on: tuple[type[BaseException], ...],
        rng: RandomSource | None = None,
    ) -> None:
        self.retries = retries
        self.backoff = backoff
        self.retry_on = retry_on
        self.rng = rng

    def __repr__(self) -> str:
        return (f"RetryPolicy(retries={self.retries!r}, backoff={self.backoff!r}, "
                f"retry_on={self.retry_on!r})")


def decide(policy: RetryPolicy, exc: BaseException, attempt: int) -> float | None:
    """Decide what happens after attempt number ``attempt`` raised ``exc``.

    Returns:
        The delay in seconds before the next attempt, or ``None`` to give up:
        when the retries are used up, or when ``exc`` is neither a
        :class:`Retry`, a :class:`TimeLimitExceeded` nor an instance of
        ``policy.retry_on``.
    """
    if attempt > policy.retries:
        return None
    if isinstance(exc, Retry):
        if exc.delay is not None:
            return exc.delay
    elif not isinstance(exc, policy.retry_on) and not isinstance(exc, TimeLimitExceeded):
        return None
    return policy.backoff.delay(attempt, policy.rng)
