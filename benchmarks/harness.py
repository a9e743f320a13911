"""Rounds, interleaving and the arithmetic of ratios: how a figure is made.

A scenario names its *contenders* (taskqueue, a baseline, a peer), each a
callable that runs the workload once and returns its figures, such as
``{"throughput": 141000.0}``. :func:`interleave` runs them in rounds, every
contender once per round, rotating who goes first, so that slow drift on a
shared machine (another tenant, thermal limits, a growing heap) hits every
side alike. :func:`compare` then pairs the rounds: the ratio is computed per
round (taskqueue's figure over the baseline's from the same round) and its
median, min and max are reported, as are the medians of the figures.

The ratio is always ``taskqueue / baseline`` in the metric's own unit; a
:class:`Target` says which way is good (``>= 2.0x`` for a throughput,
``<= 1.0x`` for a cost).
"""

from __future__ import annotations

import gc
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

__all__ = [
    "Metric",
    "Target",
    "Result",
    "Samples",
    "Contender",
    "interleave",
    "compare",
    "ratio",
    "median",
    "percentile",
    "not_measured",
]

Figures = Mapping[str, float]
"""What one run of a contender returns: figure name -> value."""

Contender = Callable[[], Figures]
"""Runs the workload once and returns its figures."""

Samples = Dict[str, List[Figures]]
"""Per contender, its figures for each round, in round order."""

# Called before each run with (round number from 1 or 0 for warm-up, contender name).
OnRun = Callable[[int, str], None]


@dataclass(frozen=True)
class Metric:
    """What a row measures.

    Args:
        key: the figure's name in what a contender returns.
        label: the row's name in the table ("throughput", "p99 light load").
        unit: "tasks/s", "us", "bytes", ...
        higher_is_better: which way a figure is good; only for reading.
    """

    key: str
    label: str
    unit: str
    higher_is_better: bool

    @property
    def better(self) -> str:
        """ "higher" or "lower", as the table and the JSON spell it."""
        return "higher" if self.higher_is_better else "lower"


_OPS: Dict[str, Callable[[float, float], bool]] = {
    ">=": lambda value, bound: value >= bound,
    ">": lambda value, bound: value > bound,
    "<=": lambda value, bound: value <= bound,
    "<": lambda value, bound: value < bound,
}


@dataclass(frozen=True)
class Target:
    """A bound on the ratio ``taskqueue / baseline``.

    Args:
        op: ">=", ">", "<=" or "<".
        value: the bound, as a ratio (2.0 means "2x the baseline").

    Raises:
        ValueError: ``op`` is not one of those four.
    """

    op: str
    value: float

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"op must be one of {sorted(_OPS)}, got {self.op!r}")

    @classmethod
    def at_least(cls, value: float) -> Target:
        """Return the target ``ratio >= value``."""
        return cls(">=", value)

    @classmethod
    def above(cls, value: float) -> Target:
        """Return the target ``ratio > value`` ("faster than")."""
        return cls(">", value)

    @classmethod
    def at_most(cls, value: float) -> Target:
        """Return the target ``ratio <= value``."""
        return cls("<=", value)

    def met(self, value: Optional[float]) -> Optional[bool]:
        """Return whether ``value`` meets the target; None if there is no value."""
        if value is None:
            return None
        return _OPS[self.op](value, self.value)

    def __str__(self) -> str:
        return f"{self.op} {self.value:.2f}x"


@dataclass(frozen=True)
class Result:
    """One row of the report: taskqueue against one baseline on one metric.

    Figures are medians over the rounds; ``ratio`` is the median of the
    per-round ratios (not the ratio of the medians), with its min and max.
    Any figure is None when it could not be measured, and ``note`` says why.
    """

    scenario: str
    metric: str
    unit: str
    better: str
    taskqueue_name: str
    baseline_name: str
    baseline: Optional[float]
    taskqueue: Optional[float]
    ratio: Optional[float]
    ratio_min: Optional[float]
    ratio_max: Optional[float]
    target: Optional[Target]
    met: Optional[bool]
    rounds: int
    sizes: Dict[str, Any] = field(default_factory=dict)
    note: Optional[str] = None
    baseline_min: Optional[float] = None
    baseline_max: Optional[float] = None
    taskqueue_min: Optional[float] = None
    taskqueue_max: Optional[float] = None
    baseline_values: List[float] = field(default_factory=list)
    taskqueue_values: List[float] = field(default_factory=list)
    ratios: List[float] = field(default_factory=list)


# -- arithmetic ------------------------------------------------------------------


def ratio(subject: Optional[float], baseline: Optional[float]) -> Optional[float]:
    """Return ``subject / baseline``, or None when either is missing or the baseline is 0.

    A zero baseline gives no ratio rather than an infinity, which JSON cannot hold.
    """
    if subject is None or baseline is None or baseline == 0:
        return None
    if math.isnan(subject) or math.isnan(baseline):
        return None
    return subject / baseline


def median(values: Sequence[Optional[float]]) -> Optional[float]:
    """Return the median of the values that are not None (None if there are none)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _lowest(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _highest(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of ``values`` (unsorted is fine).

    Args:
        values: at least one number.
        fraction: between 0 and 1 (0.99 for p99).

    Raises:
        ValueError: ``values`` is empty or ``fraction`` is outside [0, 1].
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction!r}")
    ordered = sorted(values)
    rank = max(1, math.ceil(len(ordered) * fraction))
    return ordered[rank - 1]


# -- running ------------------------------------------------------------------


def interleave(contenders: Mapping[str, Contender], rounds: int, *, warmup: int = 0,
               on_run: Optional[OnRun] = None) -> Samples:
    """Run every contender once per round, rotating who goes first.

    Round 1 runs A B C, round 2 runs B C A, and so on: each contender's
    neighbours change, and no side is always first after a pause. Warm-up
    rounds run the same way and are thrown away. A full garbage collection
    before each run keeps one contender's garbage off the next one's clock.

    Args:
        contenders: name -> callable that runs once and returns its figures.
        rounds: how many rounds to keep (>= 1).
        warmup: how many rounds to run first and discard.
        on_run: told (round, name) before each run; round 0 is warm-up.

    Returns:
        Per contender name, its figures for each kept round.

    Raises:
        ValueError: ``rounds`` < 1, ``warmup`` < 0, or no contenders.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if not contenders:
        raise ValueError("no contenders to run")
    names = list(contenders)
    samples: Samples = {name: [] for name in names}
    for index in range(warmup + rounds):
        kept = index >= warmup
        offset = index % len(names)
        for name in names[offset:] + names[:offset]:
            if on_run is not None:
                on_run(index - warmup + 1 if kept else 0, name)
            gc.collect()
            figures = contenders[name]()
            if kept:
                samples[name].append(figures)
    return samples


def compare(samples: Samples, *, scenario: str, metric: Metric, subject: str, baseline: str,
            target: Optional[Target] = None, sizes: Optional[Mapping[str, Any]] = None,
            note: Optional[str] = None) -> Result:
    """Pair ``subject`` with ``baseline`` round by round on one metric.

    Args:
        samples: what :func:`interleave` returned.
        scenario: the scenario's name.
        metric: which figure, and how to show it.
        subject: the contender in the taskqueue column.
        baseline: the contender it is compared with.
        target: the bound on the median ratio, if the row has one.
        sizes: the workload's sizes and parameters, for the JSON.
        note: a remark shown under the table.

    Raises:
        KeyError: a contender or figure is missing from ``samples``.
    """
    mine = [runs[metric.key] for runs in samples[subject]]
    theirs = [runs[metric.key] for runs in samples[baseline]]
    ratios = [ratio(a, b) for a, b in zip(mine, theirs)]
    kept = [r for r in ratios if r is not None]
    middle = median(kept)
    return Result(
        scenario=scenario,
        metric=metric.label,
        unit=metric.unit,
        better=metric.better,
        taskqueue_name=subject,
        baseline_name=baseline,
        baseline=median(theirs),
        taskqueue=median(mine),
        ratio=middle,
        ratio_min=_lowest(kept),
        ratio_max=_highest(kept),
        target=target,
        met=target.met(middle) if target is not None else None,
        rounds=len(mine),
        sizes=dict(sizes or {}),
        note=note,
        baseline_min=_lowest(theirs),
        baseline_max=_highest(theirs),
        taskqueue_min=_lowest(mine),
        taskqueue_max=_highest(mine),
        baseline_values=list(theirs),
        taskqueue_values=list(mine),
        ratios=kept,
    )


def not_measured(samples: Optional[Samples], *, scenario: str, metric: Metric, subject: str,
                 baseline: str, note: str, target: Optional[Target] = None,
                 sizes: Optional[Mapping[str, Any]] = None) -> Result:
    """Return a row whose baseline could not run: taskqueue's figure alone, and why.

    No ratio is invented and the target is neither met nor missed (``met`` is None).
    """
    mine = [runs[metric.key] for runs in samples[subject]] if samples else []
    return Result(
        scenario=scenario,
        metric=metric.label,
        unit=metric.unit,
        better=metric.better,
        taskqueue_name=subject,
        baseline_name=baseline,
        baseline=None,
        taskqueue=median(mine),
        ratio=None,
        ratio_min=None,
        ratio_max=None,
        target=target,
        met=None,
        rounds=len(mine),
        sizes=dict(sizes or {}),
        note=note,
        taskqueue_min=_lowest(mine),
        taskqueue_max=_highest(mine),
        taskqueue_values=list(mine),
    )
