"""Counters and recent timings, and the frozen :class:`Stats` snapshot.

Each worker thread owns a :class:`WorkerTally` that only it writes, so
counting costs no lock on the hot path and stays correct without the GIL;
:func:`snapshot` sums the tallies when somebody asks. Timings live in
bounded windows (``collections.deque(maxlen=...)``): O(1) per task, and
memory that does not grow with the number of tasks.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, List, Sequence

__all__ = ["Stats", "WorkerTally", "percentile", "snapshot", "WINDOW"]

WINDOW = 2048
"""How many recent attempts each worker keeps timings for."""


class WorkerTally:
    """What one worker thread has done; written only by that thread."""

    __slots__ = ("succeeded", "failed", "retried", "running", "waits", "runs", "ends")

    def __init__(self, window: int = WINDOW) -> None:
        self.succeeded = 0
        self.failed = 0
        self.retried = 0
        self.running = 0
        self.waits: Deque[float] = deque(maxlen=window)
        """Seconds each recent attempt waited in the queue before starting."""
        self.runs: Deque[float] = deque(maxlen=window)
        """Seconds each recent attempt ran."""
        self.ends: Deque[float] = deque(maxlen=window)
        """Clock readings at which recent attempts ended."""


@dataclass(frozen=True)
class Stats:
    """A consistent-at-rest snapshot of a queue's counters and timings.

    At rest ``submitted == succeeded + failed + cancelled + pending +
    running``. Times are in seconds; a percentile is 0.0 until an attempt
    has been timed.
    """

    submitted: int
    """Tasks accepted by submit() (retries and requeues of the same task not counted again)."""
    succeeded: int
    """Tasks whose last attempt returned."""
    failed: int
    """Tasks that ended with an error (each one has a dead letter)."""
    cancelled: int
    """Tasks cancelled before an attempt started."""
    retried: int
    """Attempts that were run again after a failure."""
    pending: int
    """Tasks not yet ended and not running: queued, or waiting for a retry."""
    running: int
    """Attempts running right now."""
    workers: int
    """Worker threads in the pool."""
    dead_letters: int
    """Dead letters held now (at most the queue's ``dead_letter_limit``)."""
    dead_letters_dropped: int
    """Dead letters discarded, oldest first, to stay within the limit."""
    wait_p50: float
    """Median time from queued to started over recent attempts."""
    wait_p95: float
    """95th percentile of queued-to-started time."""
    wait_p99: float
    """99th percentile of queued-to-started time."""
    run_p50: float
    """Median run time over recent attempts."""
    run_p95: float
    """95th percentile of run time."""
    run_p99: float
    """99th percentile of run time."""
    completed_per_second: float
    """Attempts ended per second over the recent window (0.0 when idle or unknown)."""
    scheduled: int = 0
    """Of the pending tasks, those waiting for a due time (a delay or a backoff);
    ``pending - scheduled`` wait for a worker."""


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of already sorted values (0.0 if empty).

    Args:
        ordered: values sorted ascending.
        fraction: which percentile, between 0 and 1 (0.99 for p99).
    """
    if not ordered:
        return 0.0
    # Round first so that float noise (100 * 0.07 == 7.000000000000001)
    # cannot push the rank up by one.
    rank = max(1, math.ceil(round(len(ordered) * fraction, 9)))
    return ordered[min(len(ordered), rank) - 1]


def snapshot(
    tallies: Sequence[WorkerTally],
    *,
    read_counts: Callable[[], Any],
    workers: int,
    now: float,
) -> Stats:
    """Build a :class:`Stats` from the workers' tallies and the broker's counts.

    ``read_counts()`` returns a :class:`~taskqueue.brokers.base.BrokerCounts`:
    submitted, cancelled and dead letters always; succeeded, failed, retried
    and running where the broker counts them itself (across processes),
    None where this process's tallies tell. ``pending`` is derived
    (submitted minus ended minus running), which is exactly "queued or
    waiting for a retry", since every other task is one of those. The
    tallies are read first and the counts last, so under load a task can be
    seen as submitted and not yet ended, never as ended and not yet
    submitted: ``pending`` is never negative.
    """
    succeeded = sum(t.succeeded for t in tallies)
    failed = sum(t.failed for t in tallies)
    retried = sum(t.retried for t in tallies)
    running = sum(t.running for t in tallies)
    # deque.copy() is one atomic step; iterating a deque that its owner is
    # appending to would raise "deque mutated during iteration".
    windows = [(t.waits.copy(), t.runs.copy(), t.ends.copy()) for t in tallies]
    counts = read_counts()
    submitted, cancelled = counts.submitted, counts.cancelled
    if counts.succeeded is not None:  # the broker counts across processes
        succeeded, failed = counts.succeeded, counts.failed
        retried, running = counts.retried, counts.running
    # A task that retries on another worker between two reads of the
    # tallies can be seen running on both; it cannot be running more than
    # it is unfinished.
    running = min(running, max(0, submitted - succeeded - failed - cancelled))
    waits = sorted(x for w, _, _ in windows for x in w)
    runs = sorted(x for _, r, _ in windows for x in r)
    pending = max(0, submitted - succeeded - failed - cancelled - running)
    return Stats(
        submitted=submitted,
        succeeded=succeeded,
        failed=failed,
        cancelled=cancelled,
        retried=retried,
        pending=pending,
        running=running,
        workers=workers,
        dead_letters=counts.dead_letters,
        dead_letters_dropped=counts.dead_letters_dropped,
        wait_p50=percentile(waits, 0.50),
        wait_p95=percentile(waits, 0.95),
        wait_p99=percentile(waits, 0.99),
        run_p50=percentile(runs, 0.50),
        run_p95=percentile(runs, 0.95),
        run_p99=percentile(runs, 0.99),
        completed_per_second=_rate([e for _, _, e in windows], now),
        scheduled=min(counts.scheduled, pending),
    )


def _rate(windows: List[Deque[float]], now: float) -> float:
    # Each worker's window reaches back a different length of time; count only
    # the span that every full window covers, so a slow worker's long window
    # does not dilute the rate.
    starts = [w[0] for w in windows if w and len(w) == w.maxlen]
    ends = [x for w in windows for x in w]
    if not ends:
        return 0.0
    since = max(starts) if starts else min(ends)
    span = now - since
    if span <= 0:
        return 0.0
    return sum(1 for x in ends if x >= since) / span
