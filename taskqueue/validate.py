"""Argument checks shared by the public constructors.

Each check raises at the call site with a message that names the parameter
and the bad value, so that nothing is half-built or half-enqueued.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["integer", "whole_number", "seconds", "optional_seconds", "optional_positive_seconds"]


def integer(name: str, value: Any) -> int:
    """Return ``value`` if it is an int.

    Raises:
        TypeError: ``value`` is not an int (``bool`` is refused too).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return value


def whole_number(name: str, value: Any, *, minimum: int) -> int:
    """Return ``value`` if it is an int >= ``minimum``.

    Raises:
        TypeError: ``value`` is not an int (``bool`` is refused too).
        ValueError: ``value`` is below ``minimum``.
    """
    integer(name, value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def seconds(name: str, value: Any) -> float:
    """Return ``value`` as a float if it is a finite number of seconds >= 0.

    Raises:
        TypeError: ``value`` is not a real number.
        ValueError: ``value`` is negative, NaN or infinite.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def optional_seconds(name: str, value: Any) -> float | None:
    """Like :func:`seconds`, but ``None`` (meaning "no limit") passes through."""
    return None if value is None else seconds(name, value)


def optional_positive_seconds(name: str, value: Any) -> float | None:
    """Like :func:`optional_seconds`, but 0 is refused too (a limit of no time).

    Raises:
        TypeError: ``value`` is not a real number or None.
        ValueError: ``value`` is not > 0, or is NaN or infinite.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)
