"""Prometheus metrics for task queues: a ``prometheus_client`` collector.

Register a collector on your own registry; whatever serves that registry's
``/metrics`` (``prometheus_client.start_http_server``, ``make_wsgi_app``,
a framework's exporter) then serves the queue's metrics too::

    from taskqueue.metrics import TaskQueueCollector

    registry.register(TaskQueueCollector(queue))  # registry: prometheus_client.REGISTRY, or yours
    # or, with several queues, one collector for all of them (not one each):
    # registry.register(TaskQueueCollector(email, billing))

One collector for all your queues: each family holds every queue's
samples, told apart by their ``queue`` label. Two collectors on one
registry would claim the same names, which ``prometheus_client`` refuses.

Needs the optional ``prometheus_client`` (``pip install 'taskqueue[metrics]'``);
this module is imported only by those who use it.

What is exported (times in seconds; no task ids as labels, so the number
of series stays bounded by the number of task names):

==================================  =========  ================================================
name                                type       labels, meaning
==================================  =========  ================================================
taskqueue_tasks_submitted_total     counter    queue, task: tasks accepted
taskqueue_tasks_succeeded_total     counter    queue, task: tasks that ended with a result
taskqueue_tasks_failed_total        counter    queue, task: tasks that ended in failure
taskqueue_tasks_retried_total       counter    queue, task: failed attempts to be run again
taskqueue_tasks_cancelled_total     counter    queue, task: tasks cancelled before they started
taskqueue_tasks_pending             gauge      queue: tasks waiting for a worker
taskqueue_tasks_scheduled           gauge      queue: tasks waiting for a due time (delay, backoff)
taskqueue_tasks_running             gauge      queue: attempts running now
taskqueue_queue_capacity            gauge      queue: ``maxsize`` (0 for an unbounded queue)
taskqueue_dead_letters              gauge      queue: dead letters held
taskqueue_workers                   gauge      queue: worker threads of this process
taskqueue_task_wait_seconds         histogram  queue, task: time an attempt waited to start
taskqueue_task_run_seconds          histogram  queue, task: time an attempt ran
==================================  =========  ================================================

The counters and histograms count the events this process saw from the
moment the collector was made (see :class:`TaskQueueCollector`): with Redis,
each process exports its own, as Prometheus expects, and ``sum()`` over
instances aggregates them. The gauges are read from ``queue.stats()`` when
Prometheus scrapes: pending, scheduled, running and dead letters are the
queue's, the same in every process on Redis (aggregate them with ``max()``);
the workers are this process's (``sum()``).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import logging
import math
import numbers
import threading
from collections import abc
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from taskqueue import BrokerError, Event, EventKind, QueueClosed, TaskQueue

try:
    from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                        HistogramMetricFamily, Metric)
    from prometheus_client.utils import floatToGoString
except ImportError as exc:
    raise ImportError("taskqueue.metrics needs prometheus_client: pip install 'taskqueue[metrics]'",
                      name="prometheus_client") from exc

__all__ = ["TaskQueueCollector", "DEFAULT_BUCKETS"]

log = logging.getLogger(__name__)

DEFAULT_BUCKETS: Tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                      1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds (seconds) of the histograms' buckets, from 1 ms to a minute; +Inf is added."""

# The counters, in the order of a series' ``counts``: (name, help).
_COUNTERS: Tuple[Tuple[str, str], ...] = (
    ("taskqueue_tasks_submitted_total", "Tasks accepted by the queue, seen by this process."),
    ("taskqueue_tasks_succeeded_total", "Tasks that ended with a result, seen by this process."),
    ("taskqueue_tasks_failed_total", "Tasks that ended in failure (each has a dead letter), "
                                     "seen by this process."),
    ("taskqueue_tasks_retried_total", "Failed attempts that are to be run again, "
                                      "seen by this process."),
    ("taskqueue_tasks_cancelled_total", "Tasks cancelled before an attempt started, "
                                        "seen by this process."),
)
# The histograms, in the order of a series' ``histograms``: (name, help).
_HISTOGRAMS: Tuple[Tuple[str, str], ...] = (
    ("taskqueue_task_wait_seconds", "Seconds an attempt waited in the queue before it started."),
    ("taskqueue_task_run_seconds", "Seconds an attempt ran."),
)
_WAIT, _RUN = 0, 1
# What each event does: (index into _COUNTERS or None, index into _HISTOGRAMS or None).
_ACTIONS: Dict[EventKind, Tuple[Optional[int], Optional[int]]] = {
    EventKind.SUBMITTED: (0, None),
    EventKind.STARTED: (None, _WAIT),
    EventKind.SUCCEEDED: (1, _RUN),
    EventKind.FAILED: (2, _RUN),
    EventKind.RETRYING: (3, _RUN),
    EventKind.CANCELLED: (4, None),
}
_QUEUE_LABELS = ["queue"]
_TASK_LABELS = ["queue", "task"]


class _Series:
    """What one task name has done: counters, and per-bucket (not cumulative) counts."""

    __slots__ = ("counts", "histograms", "sums")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * len(_COUNTERS)
        self.histograms = [[0] * buckets for _ in _HISTOGRAMS]
        """For each histogram, observations per bucket; the last bucket is +Inf."""
        self.sums = [0.0] * len(_HISTOGRAMS)

    def copy(self) -> _Series:
        twin = _Series(0)
        twin.counts = list(self.counts)
        twin.histograms = [list(h) for h in self.histograms]
        twin.sums = list(self.sums)
        return twin


class _Watched:
    """One queue as a collector sees it: its label, its listener, what its tasks did."""

    __slots__ = ("queue", "name", "series", "listener")

    def __init__(self, queue: TaskQueue, on_event: Callable[[_Watched, Event], None]) -> None:
        self.queue = queue
        self.name = queue.name
        """The ``queue`` label, fixed when the collector is made (names were checked then)."""
        self.series: Dict[str, _Series] = {}
        """Per task name; changed only under the collector's lock."""
        self.listener = functools.partial(on_event, self)
        """What is added to the queue, and removed by close(): this very object."""


class TaskQueueCollector:
    """A ``prometheus_client`` collector of queues' metrics (see the module's table).

    One collector for all your queues: ``TaskQueueCollector(email,
    billing)`` yields one family per metric name, holding each queue's
    samples with its ``queue`` label (the queue's ``name`` when the
    collector is made).

    Making one adds a listener to each queue; from then on, every task event
    is counted, per queue and task name (``TaskHandle.name``, the registered
    name of a task function): SUBMITTED, SUCCEEDED, FAILED, RETRYING and
    CANCELLED each add one to their counter; STARTED observes the attempt's
    wait, and SUCCEEDED, FAILED and RETRYING its run time, once per attempt.
    The gauges are read from each queue's ``stats()`` on each scrape.

    Args:
        queue: the queue to export.
        *more_queues: more queues to export with it, each of a name of its
            own; their samples follow ``queue``'s, in this order.
        buckets: the histograms' bucket upper bounds in seconds, finite,
            positive and increasing (a trailing ``math.inf`` is allowed, as
            in ``prometheus_client``: +Inf is always added);
            :data:`DEFAULT_BUCKETS` if None. The same for every queue.

    Raises:
        TypeError: ``queue`` or one of ``more_queues`` is not a TaskQueue,
            or ``buckets`` is not a sequence of numbers.
        ValueError: two queues have the same name (the same queue given
            twice, too), or ``buckets`` is empty, not increasing, or holds
            a bound that is not a positive finite number.
        QueueClosed: a queue belongs to a parent process.

    Nothing is listened to if it raises.

    Guarantees: the counters and histograms count what happened in this
    process from the moment the collector was made, nothing earlier (a
    task already queued is counted as it starts and ends, not as
    submitted), and nothing after :meth:`close` returns. Counters never go
    down while the collector lives. Every task name seen, and every task
    function registered on the queue, has all its series, zero or not, so
    that ``rate()`` and ``increase()`` see a first failure. Every method is
    safe to call from any thread.

    A registry takes one collector of these names: registering a second
    one on it (say, one per queue) raises ``prometheus_client``'s
    ``ValueError`` ("Duplicated timeseries"), and the first stays served.
    Give all the queues to one collector instead.
    """

    def __init__(self, queue: TaskQueue, *more_queues: TaskQueue,
                 buckets: Optional[Iterable[float]] = None) -> None:
        queues = (queue,) + more_queues
        for index, each in enumerate(queues):
            if not isinstance(each, TaskQueue):
                raise TypeError(f"{_parameter(index)} must be a TaskQueue, got {each!r}"
                                f"{_hint(each)}")
        _check_names(queues)
        self._bounds = _check_buckets(DEFAULT_BUCKETS if buckets is None else buckets)
        self._les = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        self._lock = threading.Lock()
        self._closed = False
        self._watched = [_Watched(each, self._on_event) for each in queues]
        added: List[_Watched] = []
        try:
            for watched in self._watched:
                watched.queue.add_listener(watched.listener)
                added.append(watched)
        except BaseException:  # a forked queue: listen to none rather than to some
            for watched in added:
                watched.queue.remove_listener(watched.listener)
            raise

    # -- counting: runs in every thread where a task event happens -----------------------

    def _on_event(self, watched: _Watched, event: Event) -> None:
        action = _ACTIONS.get(event.kind)
        if action is None:  # a kind added later: not counted until this module knows it
            return
        counter, histogram = action
        seconds = event.seconds
        if histogram is not None and seconds is not None:
            if seconds < 0.0:  # a clock stepped back (a fake one): a _sum must never go down
                seconds = 0.0
            bucket = bisect.bisect_left(self._bounds, seconds)  # the first bound >= seconds
        else:
            histogram = None
        name = event.handle.name
        with self._lock:
            if self._closed:
                return
            series = watched.series.get(name)
            if series is None:
                series = watched.series[name] = _Series(len(self._les))
            if counter is not None:
                series.counts[counter] += 1
            if histogram is not None:
                series.histograms[histogram][bucket] += 1
                series.sums[histogram] += seconds  # type: ignore[operator]

    # -- what prometheus_client calls ----------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        """Yield every family this collector exports, without samples.

        ``CollectorRegistry.register`` calls it to check names for clashes,
        so registering reads nothing from the queue.
        """
        yield from self._counter_families()
        yield from self._gauge_families()
        yield from self._histogram_families()

    def collect(self) -> Iterator[Metric]:
        """Yield the queues' metrics now; the registry calls it on each scrape.

        If a queue's ``stats()`` fails (Redis cannot be reached, or the
        queue belongs to a parent process), that queue's gauges are left
        out and a warning is logged: its counters, the other queues'
        metrics, and every other collector on the registry, are still served.
        """
        with self._lock:
            seen = [{name: series.copy() for name, series in watched.series.items()}
                    for watched in self._watched]
        blank = _Series(len(self._les))
        rows: List[Tuple[List[str], _Series]] = []  # ([queue, task], series), queue by queue
        for watched, counted in zip(self._watched, seen):
            for name in sorted(set(counted).union(watched.queue.tasks)):
                rows.append(([watched.name, name], counted.get(name, blank)))

        counters = self._counter_families()
        for labels, series in rows:
            for family, value in zip(counters, series.counts):
                family.add_metric(labels, value)
        yield from counters

        gauges = self._gauge_families()
        for watched in self._watched:
            values = self._gauge_values(watched)
            if values is not None:
                for family, value in zip(gauges, values):
                    family.add_metric([watched.name], value)
        yield from gauges

        histograms = self._histogram_families()
        for labels, series in rows:
            for family, counts, total in zip(histograms, series.histograms, series.sums):
                cumulative = itertools.accumulate(counts)
                family.add_metric(labels, list(zip(self._les, cumulative)), total)
        yield from histograms

    @staticmethod
    def _gauge_values(watched: _Watched) -> Optional[List[float]]:
        # In the order of _gauge_families.
        try:
            stats = watched.queue.stats()
        except (BrokerError, QueueClosed) as exc:
            log.warning("metrics of %s: no gauges in this scrape, stats() failed: %s",
                        watched.name, exc)
            return None
        maxsize = watched.queue.maxsize
        return [stats.pending - stats.scheduled, stats.scheduled, stats.running,
                maxsize, stats.dead_letters, stats.workers]

    # -- the families, empty: one place for their names, types and help --------------------

    @staticmethod
    def _counter_families() -> List[CounterMetricFamily]:
        return [CounterMetricFamily(name, doc, labels=_TASK_LABELS) for name, doc in _COUNTERS]

    @staticmethod
    def _gauge_families() -> List[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("taskqueue_tasks_pending",
                              "Tasks waiting for a worker (queued and due).",
                              labels=_QUEUE_LABELS),
            GaugeMetricFamily("taskqueue_tasks_scheduled",
                              "Tasks waiting for a due time: a delay or a retry's backoff.",
                              labels=_QUEUE_LABELS),
            GaugeMetricFamily("taskqueue_tasks_running", "Attempts running now.",
                              labels=_QUEUE_LABELS),
            GaugeMetricFamily("taskqueue_queue_capacity",
                              "How many tasks may wait before submit blocks (maxsize; "
                              "0: no bound).", labels=_QUEUE_LABELS),
            GaugeMetricFamily("taskqueue_dead_letters", "Dead letters held now.",
                              labels=_QUEUE_LABELS),
            GaugeMetricFamily("taskqueue_workers", "Worker threads of the queue in this process.",
                              labels=_QUEUE_LABELS),
        ]

    @staticmethod
    def _histogram_families() -> List[HistogramMetricFamily]:
        return [HistogramMetricFamily(name, doc, labels=_TASK_LABELS) for name, doc in _HISTOGRAMS]

    # -- the end -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop counting: remove the listener from every queue.

        Nothing is counted once this returns, even an event already on its
        way in another thread. The collector still serves what it counted,
        and the gauges: unregister it too (``registry.unregister(collector)``)
        to stop exporting. Idempotent; safe from any thread, a listener too.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for watched in self._watched:
            try:
                watched.queue.remove_listener(watched.listener)
            except QueueClosed:  # a forked child: its queue's listeners never hear anything
                pass

    def __repr__(self) -> str:
        names = ", ".join(repr(watched.name) for watched in self._watched)
        state = " closed" if self._closed else ""
        return f"<TaskQueueCollector of {names}{state}>"


def _hint(value: Any) -> str:
    """How to pass ``value`` instead, if it holds queues; else nothing."""
    if isinstance(value, (list, tuple, set, frozenset)) and value \
            and all(isinstance(each, TaskQueue) for each in value):
        return " (pass several queues as arguments of their own: TaskQueueCollector(*queues))"
    return ""


def _parameter(index: int) -> str:
    """The name of the collector's ``index``-th queue argument, for error messages."""
    return "queue" if index == 0 else f"more_queues[{index - 1}]"


def _check_names(queues: Tuple[TaskQueue, ...]) -> None:
    """Refuse two queues of one name: their samples would have the same labels.

    Raises:
        ValueError: two of ``queues`` have the same name, or are the same queue.
    """
    named: Dict[str, int] = {}
    for index, each in enumerate(queues):
        first = named.setdefault(each.name, index)
        if first == index:
            continue
        if queues[first] is each:
            raise ValueError(f"{_parameter(index)} is {_parameter(first)} again: the queue "
                             f"{each.name!r} given twice")
        raise ValueError(f"{_parameter(index)} is named {each.name!r}, as {_parameter(first)} "
                         f"is: every queue needs a name of its own (TaskQueue(name=...)), "
                         f"or their samples would collide")


def _check_buckets(buckets: Any) -> List[float]:
    """Return ``buckets`` as a list of finite floats, a last +Inf dropped.

    Raises:
        TypeError: ``buckets`` is not an iterable of real numbers.
        ValueError: it is empty, not strictly increasing, or holds a bound
            that is not positive, or not finite (but a last +Inf).
    """
    if isinstance(buckets, (str, bytes)) or not isinstance(buckets, abc.Iterable):
        raise TypeError(f"buckets must be a sequence of numbers of seconds, got {buckets!r}")
    bounds: List[float] = []
    for index, bound in enumerate(buckets):
        if isinstance(bound, bool) or not isinstance(bound, numbers.Real):
            raise TypeError(f"buckets must hold numbers of seconds, got {bound!r} at index {index}")
        try:
            bounds.append(float(bound))
        except OverflowError:  # an int too large for a float
            bounds.append(math.inf if bound > 0 else -math.inf)
    if bounds and bounds[-1] == math.inf:  # prometheus_client's own lists end with it
        bounds.pop()
    if not bounds:
        raise ValueError("buckets must hold at least one finite bound (+Inf is added), got none")
    for index, bound in enumerate(bounds):
        if not math.isfinite(bound) or bound <= 0:
            raise ValueError(f"buckets must be positive finite numbers of seconds (+Inf is "
                             f"added), got {bound!r} at index {index}")
        if index and bound <= bounds[index - 1]:
            raise ValueError(f"buckets must be strictly increasing, got {bound!r} after "
                             f"{bounds[index - 1]!r} at index {index}")
    return bounds
