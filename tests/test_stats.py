"""Tests for taskqueue.stats: percentile, WorkerTally windows and snapshot()."""

from __future__ import annotations

import dataclasses
from collections import deque

import pytest

from taskqueue.brokers import BrokerCounts
from taskqueue.stats import WINDOW, Stats, WorkerTally, percentile, snapshot


# -- percentile ----------------------------------------------------------------------


def test_percentile_of_nothing_is_zero():
    assert percentile([], 0.5) == 0.0
    assert percentile((), 0.99) == 0.0


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))  # 1..100: the p-th percentile is p
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.95) == 95
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile(values, 0.0) == 1  # rank is at least 1


def test_percentile_rounds_the_rank_up():
    values = [10.0, 20.0, 30.0, 40.0]
    assert percentile(values, 0.50) == 20.0  # ceil(2.0) = 2
    assert percentile(values, 0.51) == 30.0  # ceil(2.04) = 3
    assert percentile(values, 0.95) == 40.0
    assert percentile([7.0], 0.5) == 7.0
    assert percentile([1.0, 2.0, 3.0], 0.5) == 2.0  # ceil(1.5) = 2


def test_percentile_ranks_for_the_fractions_stats_use():
    # Every window size up to four full workers: no float drift in the rank.
    values = list(range(1, 4 * WINDOW + 1))  # the value at rank r is r
    for n in range(1, len(values) + 1):
        head = values[:n]
        for fraction, percent in ((0.50, 50), (0.95, 95), (0.99, 99)):
            expected_rank = max(1, -(-n * percent // 100))  # exact integer ceil
            assert percentile(head, fraction) == expected_rank, (n, fraction)


def test_percentile_is_exact_for_any_whole_percent():
    values = list(range(1, 101))
    assert [percentile(values, p / 100) for p in range(1, 101)] == list(range(1, 101))


# -- WorkerTally ------------------------------------------------------------------------


def test_tally_starts_at_zero_with_default_windows():
    tally = WorkerTally()
    assert (tally.succeeded, tally.failed, tally.retried, tally.running) == (0, 0, 0, 0)
    for window in (tally.waits, tally.runs, tally.ends):
        assert len(window) == 0 and window.maxlen == WINDOW


def test_tally_windows_keep_at_most_window_entries():
    tally = WorkerTally(window=3)
    for i in range(10):
        tally.waits.append(float(i))
        tally.runs.append(float(i))
        tally.ends.append(float(i))
    for window in (tally.waits, tally.runs, tally.ends):
        assert list(window) == [7.0, 8.0, 9.0]


# -- snapshot ----------------------------------------------------------------------------


def tally(succeeded=0, failed=0, retried=0, running=0, waits=(), runs=(), ends=(),
          window=WINDOW) -> WorkerTally:
    t = WorkerTally(window=window)
    t.succeeded, t.failed, t.retried, t.running = succeeded, failed, retried, running
    t.waits.extend(waits)
    t.runs.extend(runs)
    t.ends.extend(ends)
    return t


def counts(submitted: int = 0, cancelled: int = 0, dead_letters: int = 0,
           dead_letters_dropped: int = 0, **broker_counted: int) -> BrokerCounts:
    return BrokerCounts(submitted=submitted, cancelled=cancelled, dead_letters=dead_letters,
                        dead_letters_dropped=dead_letters_dropped, **broker_counted)


def take(tallies, submitted=0, cancelled=0, now=0.0, workers=None, **kw) -> Stats:
    read = counts(submitted, cancelled, **kw)
    return snapshot(tallies, read_counts=lambda: read,
                    workers=len(tallies) if workers is None else workers, now=now)


def test_snapshot_of_an_idle_queue():
    stats = take([WorkerTally(), WorkerTally()])
    assert stats == Stats(
        submitted=0, succeeded=0, failed=0, cancelled=0, retried=0, pending=0,
        running=0, workers=2, dead_letters=0, dead_letters_dropped=0,
        wait_p50=0.0, wait_p95=0.0, wait_p99=0.0, run_p50=0.0, run_p95=0.0,
        run_p99=0.0, completed_per_second=0.0)


def test_snapshot_sums_the_tallies_and_derives_pending():
    tallies = [tally(succeeded=5, failed=1, retried=2, running=1),
               tally(succeeded=3, failed=2, retried=1, running=0),
               tally(succeeded=0, failed=0, retried=0, running=1)]
    stats = take(tallies, submitted=20, cancelled=4, workers=3,
                 dead_letters=3, dead_letters_dropped=7)
    assert (stats.submitted, stats.succeeded, stats.failed, stats.cancelled) == (20, 8, 3, 4)
    assert (stats.retried, stats.running, stats.workers) == (3, 2, 3)
    assert (stats.dead_letters, stats.dead_letters_dropped) == (3, 7)
    assert stats.pending == 20 - 8 - 3 - 4 - 2
    assert stats.submitted == (stats.succeeded + stats.failed + stats.cancelled
                               + stats.pending + stats.running)


def test_snapshot_percentiles_merge_every_workers_window():
    a = tally(waits=[float(x) for x in range(1, 51)], runs=[float(x) for x in range(101, 151)])
    b = tally(waits=[float(x) for x in range(51, 101)], runs=[float(x) for x in range(151, 201)])
    stats = take([a, b])
    assert (stats.wait_p50, stats.wait_p95, stats.wait_p99) == (50.0, 95.0, 99.0)
    assert (stats.run_p50, stats.run_p95, stats.run_p99) == (150.0, 195.0, 199.0)


class OrderLog(list):
    """Records the order in which snapshot() reads things."""


class LoggedTally:
    """Duck-types a WorkerTally and logs every read of a counter or window."""

    def __init__(self, log: OrderLog, source: WorkerTally) -> None:
        self._log, self._source = log, source

    def __getattr__(self, name: str):
        self._log.append(name)
        return getattr(self._source, name)


def test_snapshot_reads_the_broker_counts_after_every_tally():
    log = OrderLog()
    tallies = [LoggedTally(log, tally(succeeded=1, ends=[1.0])),
               LoggedTally(log, tally(failed=1))]

    def read_counts() -> BrokerCounts:
        log.append("submitted")
        return counts(submitted=2)

    stats = snapshot(tallies, read_counts=read_counts, workers=2, now=2.0)  # type: ignore[arg-type]
    assert log[-1] == "submitted"
    assert log.count("submitted") == 1
    assert {"succeeded", "failed", "retried", "running", "waits", "runs", "ends"} <= set(log)
    assert stats.pending == 0


def test_snapshot_never_sees_an_end_before_its_submission():
    # Given a task that is submitted and ends while the snapshot is being
    # taken (simulated: read_submitted sees it, the tally was read before)
    worker = tally()

    def read_counts() -> BrokerCounts:
        worker.succeeded += 1  # the task ends "now", after the tallies were read
        return counts(submitted=1)

    # When the snapshot is taken
    stats = snapshot([worker], read_counts=read_counts, workers=1, now=0.0)

    # Then it shows the task as submitted and pending, not as ended early
    assert (stats.submitted, stats.succeeded, stats.pending) == (1, 0, 1)


def test_stats_is_frozen_and_documented():
    stats = take([WorkerTally()])
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.submitted = 1  # type: ignore[misc]
    assert Stats.__doc__


# -- completed_per_second ------------------------------------------------------------------


def test_rate_is_zero_without_ends():
    assert take([WorkerTally(), WorkerTally()], now=50.0).completed_per_second == 0.0


def test_rate_over_a_window_that_is_not_full_spans_from_the_first_end():
    stats = take([tally(ends=[10.0, 11.0, 12.0, 13.0], window=100)], now=14.0)
    assert stats.completed_per_second == 4 / (14.0 - 10.0)


def test_rate_over_a_full_window():
    stats = take([tally(ends=[2.0, 3.0, 4.0, 5.0, 6.0], window=4)], now=8.0)
    # The window holds 3..6; it covers from 3.0 onwards.
    assert stats.completed_per_second == 4 / (8.0 - 3.0)


def test_rate_counts_only_the_span_every_full_window_covers():
    # Given a busy worker whose full window reaches back to 90, and a slow
    # one whose full window reaches back to 0
    busy = tally(ends=[90.0, 92.0, 94.0, 96.0, 98.0], window=5)
    slow = tally(ends=[0.0, 50.0, 95.0], window=3)
    # When the rate is taken at 100
    stats = take([busy, slow], now=100.0)
    # Then it counts the ends since 90 (five busy, one slow) over ten seconds
    assert stats.completed_per_second == 6 / 10.0


def test_rate_is_zero_when_no_time_has_passed():
    assert take([tally(ends=[5.0, 5.0])], now=5.0).completed_per_second == 0.0
    assert take([tally(ends=[5.0])], now=4.0).completed_per_second == 0.0


def test_snapshot_does_not_change_the_tallies():
    worker = tally(succeeded=1, waits=[0.3, 0.1, 0.2], runs=[2.0, 1.0], ends=[1.0, 2.0])
    take([worker], submitted=1, now=3.0)
    assert list(worker.waits) == [0.3, 0.1, 0.2]
    assert list(worker.runs) == [2.0, 1.0]
    assert list(worker.ends) == [1.0, 2.0]
    assert isinstance(worker.waits, deque)


def test_a_broker_that_counts_across_processes_overrides_the_local_tallies():
    local = [tally(succeeded=1, failed=0, retried=0, running=0)]
    stats = take(local, submitted=10, cancelled=1, succeeded=6, failed=1, retried=3, running=2)
    assert (stats.succeeded, stats.failed, stats.retried, stats.running) == (6, 1, 3, 2)
    assert stats.pending == 10 - 6 - 1 - 1 - 2
