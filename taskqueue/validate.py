"""Argument checks shared by the public constructors and methods.

Each check raises at the call site with a message that names the parameter
and the bad value, so that nothing is half-built or half-enqueued.

Durations are finite numbers of seconds. One longer than :data:`MAX_SECONDS`,
the longest wait the platform's locks and conditions accept
(``threading.TIMEOUT_MAX``, about 292 years), is clamped to it where it is
given: kept as it was, it would make a timer thread fail with
``OverflowError`` later, far from the call that gave it. A number that is
not finite as a float (NaN, infinity, an int too large for a float such as
``10**400``) is refused with a ``ValueError`` naming the parameter.
"""

from __future__ import annotations

import math
import threading
from typing import Any

__all__ = ["MAX_SECONDS", "integer", "whole_number", "seconds", "optional_seconds",
           "optional_positive_seconds", "shown", "wait_seconds"]

MAX_SECONDS = float(int(threading.TIMEOUT_MAX))
"""The longest duration kept (about 292 years on 64-bit Linux); longer ones are clamped to it."""


def shown(value: Any) -> str:
    """Return ``repr(value)`` for an error message, cut short if it is long (a huge int)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** 30:
        return f"an int of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def integer(name: str, value: Any) -> int:
    """Return ``value`` if it is an int.

    Raises:
        TypeError: ``value`` is not an int (``bool`` is refused too).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {shown(value)}")
    return value


def whole_number(name: str, value: Any, *, minimum: int) -> int:
    """Return ``value`` if it is an int >= ``minimum``.

    Raises:
        TypeError: ``value`` is not an int (``bool`` is refused too).
        ValueError: ``value`` is below ``minimum``.
    """
    integer(name, value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {shown(value)}")
    return value


def _as_seconds(name: str, value: Any, lowest: str) -> float:
    # The one place a number of seconds is converted: a huge int raises
    # OverflowError in float(), which must come out as a ValueError that
    # names the parameter like every other bad duration.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {shown(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number {lowest}, got {shown(value)}")
    return MAX_SECONDS if number > MAX_SECONDS else number


def seconds(name: str, value: Any) -> float:
    """Return ``value`` as a float if it is a finite number of seconds >= 0.

    Above :data:`MAX_SECONDS` it is clamped to :data:`MAX_SECONDS`.

    Raises:
        TypeError: ``value`` is not a real number.
        ValueError: ``value`` is negative, NaN, infinite, or an int too large for a float.
    """
    number = _as_seconds(name, value, ">= 0")
    if number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {shown(value)}")
    return number


def optional_seconds(name: str, value: Any) -> float | None:
    """Like :func:`seconds`, but ``None`` (meaning "no limit") passes through."""
    return None if value is None else seconds(name, value)


def optional_positive_seconds(name: str, value: Any) -> float | None:
    """Like :func:`optional_seconds`, but 0 is refused too (a limit of no time).

    Raises:
        TypeError: ``value`` is not a real number or None.
        ValueError: ``value`` is not > 0, or is NaN, infinite, or an int too large for a float.
    """
    if value is None:
        return None
    number = _as_seconds(name, value, "> 0")
    if number <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {shown(value)}")
    return number


def wait_seconds(remaining: float) -> float:
    """Return ``remaining`` cut to what ``Condition.wait`` accepts.

    For waits computed inside the library (a deadline minus now): a due
    time beyond :data:`MAX_SECONDS` is then waited for in several steps
    instead of failing the waiting thread.
    """
    return remaining if remaining < MAX_SECONDS else MAX_SECONDS
