"""Tests for taskqueue.metrics: the prometheus_client collector, scraped over real HTTP."""

from __future__ import annotations

import collections
import logging
import math
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.request
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

prometheus_client = pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from taskqueue import (Backoff, BrokerError, Event, EventKind, QueueClosed, TaskQueue,  # noqa: E402
                       TaskState)
from taskqueue.metrics import DEFAULT_BUCKETS, TaskQueueCollector  # noqa: E402

from conftest import WAIT, FakeClock, Gate  # noqa: E402

COUNTERS = ("submitted", "succeeded", "failed", "retried", "cancelled")
GAUGES = ("taskqueue_tasks_pending", "taskqueue_tasks_scheduled", "taskqueue_tasks_running",
          "taskqueue_queue_capacity", "taskqueue_dead_letters", "taskqueue_workers")
HISTOGRAMS = ("taskqueue_task_wait_seconds", "taskqueue_task_run_seconds")
# The family names as prometheus_client's parser gives them (a counter's without _total).
FAMILIES = {f"taskqueue_tasks_{c}": "counter" for c in COUNTERS}
FAMILIES.update({g: "gauge" for g in GAUGES})
FAMILIES.update({h: "histogram" for h in HISTOGRAMS})

Families = Dict[str, Any]


# -- scraping a real endpoint -----------------------------------------------------------

def serve(registry: CollectorRegistry) -> Tuple[str, Callable[[], None]]:
    """Serve ``registry`` on a free loopback port; return its URL and how to stop it."""
    started = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=registry)
    if started is not None:  # prometheus_client >= 0.17: (server, thread)
        server, thread = started

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(WAIT)
        return f"http://127.0.0.1:{server.server_port}/metrics", stop
    # Older versions return nothing, so port 0 cannot be found out: pick a
    # free port first. Their server thread is a daemon that cannot be stopped.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    prometheus_client.start_http_server(port, addr="127.0.0.1", registry=registry)
    return f"http://127.0.0.1:{port}/metrics", lambda: None


@pytest.fixture
def registry() -> CollectorRegistry:
    """A registry of this test's own (never the process-wide REGISTRY)."""
    return CollectorRegistry()


@pytest.fixture
def scrape(registry: CollectorRegistry) -> Iterator[Callable[[], Families]]:
    """Yield a function that GETs /metrics over HTTP and parses it by family name."""
    url, stop = serve(registry)

    def scrape() -> Families:
        with urllib.request.urlopen(url, timeout=WAIT) as response:
            assert response.status == 200
            text = response.read().decode("utf-8")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        scrape.text = text  # type: ignore[attr-defined]
        return families

    yield scrape
    stop()


def counters(families: Families, queue: str) -> Dict[str, Dict[str, float]]:
    """{task name: {"submitted": n, ...}} for one queue, from the *_total samples."""
    found: Dict[str, Dict[str, float]] = collections.defaultdict(dict)
    for what in COUNTERS:
        family = families[f"taskqueue_tasks_{what}"]
        for sample in family.samples:
            assert sample.name == f"taskqueue_tasks_{what}_total"
            if sample.labels["queue"] == queue:
                found[sample.labels["task"]][what] = sample.value
    return dict(found)


def gauges(families: Families, queue: str) -> Dict[str, float]:
    """{gauge name: value} for one queue."""
    found = {}
    for name in GAUGES:
        values = [s.value for s in families[name].samples if s.labels == {"queue": queue}]
        assert len(values) <= 1, (name, values)
        if values:
            found[name] = values[0]
    return found


def histogram(families: Families, name: str, queue: str, task: str) -> Dict[str, Any]:
    """One histogram series: {"count": n, "sum": s, "buckets": [(le, cumulative), ...]}."""
    series: Dict[str, Any] = {"buckets": []}
    for sample in families[name].samples:
        labels = dict(sample.labels)
        le = labels.pop("le", None)
        if labels != {"queue": queue, "task": task}:
            continue
        if sample.name == f"{name}_bucket":
            series["buckets"].append((le, sample.value))
        elif sample.name == f"{name}_count":
            series["count"] = sample.value
        elif sample.name == f"{name}_sum":
            series["sum"] = sample.value
    return series


def les(bounds: Any) -> List[str]:
    """The ``le`` labels a histogram with these finite bounds has."""
    return [prometheus_client.utils.floatToGoString(b) for b in bounds] + ["+Inf"]


class Seen:
    """A listener, added after the collector's, that tells when it has seen events.

    Listeners run one after another in the thread of the event, in the
    order added: once this one has seen an event, so has the collector.
    """

    def __init__(self) -> None:
        self._events: List[Event] = []
        self._cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    def wait_for(self, kind: EventKind, count: int) -> None:
        """Block until ``count`` events of ``kind`` were seen."""
        def enough() -> bool:
            return sum(1 for e in self._events if e.kind is kind) >= count
        with self._cond:
            assert self._cond.wait_for(enough, WAIT), f"fewer than {count} {kind} events"


# -- the whole picture --------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_a_scrape_reports_exact_counts_gauges_and_histograms_for_a_known_mix_of_tasks(
        make_queue: Callable[..., TaskQueue], registry: CollectorRegistry,
        scrape: Callable[[], Families]) -> None:
    # Given a queue with two task functions and a collector on a private registry
    queue = make_queue(workers=3, maxsize=50, name="orders",
                       backoff=Backoff(base=0.001, jitter=False))
    registry.register(TaskQueueCollector(queue))
    calls: Dict[str, int] = collections.Counter()
    lock = threading.Lock()

    @queue.task(name="ok")
    def ok(x: int) -> int:
        return x

    @queue.task(name="flaky", retries=2)
    def flaky(key: str, failures: int) -> str:
        with lock:
            calls[key] += 1
            attempt = calls[key]
        if attempt <= failures:
            raise ValueError(f"{key} fails on attempt {attempt}")
        return key

    # When five succeed at once, one succeeds on its second attempt, two
    # fail for good after three attempts, ...
    handles = [ok.submit(i) for i in range(5)]
    handles += [flaky.submit("once", 1), flaky.submit("never", 9), flaky.submit("nope", 9)]
    assert queue.join(WAIT)
    assert [h.state for h in handles] == [TaskState.SUCCEEDED] * 6 + [TaskState.FAILED] * 2
    # ... one waits for a due time an hour away, and one is cancelled before its own
    waiting = ok.options(delay=3600).submit(98)
    dropped = ok.options(delay=3600).submit(99)
    assert dropped.cancel()
    families = scrape()

    # Then every family is there, of its type, and nothing else of ours
    assert {name: f.type for name, f in families.items() if name.startswith("taskqueue_")} \
        == FAMILIES
    for what in COUNTERS:
        assert f"# TYPE taskqueue_tasks_{what}_total counter" in scrape.text  # type: ignore
    # the counters, exactly, per (queue, task)
    assert counters(families, "orders") == {
        "ok": {"submitted": 7, "succeeded": 5, "failed": 0, "retried": 0, "cancelled": 1},
        "flaky": {"submitted": 3, "succeeded": 1, "failed": 2, "retried": 5, "cancelled": 0},
    }
    # the gauges: only the delayed task is left, waiting for its due time
    assert gauges(families, "orders") == {
        "taskqueue_tasks_pending": 0, "taskqueue_tasks_scheduled": 1,
        "taskqueue_tasks_running": 0, "taskqueue_queue_capacity": 50,
        "taskqueue_dead_letters": 2, "taskqueue_workers": 3,
    }
    assert waiting.state is TaskState.SCHEDULED
    # the histograms: one observation per attempt (ok: 5, flaky: 2 + 3 + 3)
    for name in HISTOGRAMS:
        for task, attempts in (("ok", 5), ("flaky", 8)):
            series = histogram(families, name, "orders", task)
            assert series["count"] == attempts, (name, task)
            assert 0 <= series["sum"] < WAIT * attempts, (name, task)
            assert [le for le, _ in series["buckets"]] == les(DEFAULT_BUCKETS)
            cumulative = [value for _, value in series["buckets"]]
            assert cumulative == sorted(cumulative) and cumulative[-1] == attempts
    # and no task id is a label, nor a label's value
    ids = {h.id for h in handles + [waiting, dropped]}
    for family in families.values():
        for sample in family.samples:
            assert set(sample.labels) <= {"queue", "task", "le"}, sample
            assert not ids & set(sample.labels.values()), sample


@pytest.mark.timeout(30)
def test_gauges_show_a_blocked_worker_as_running_and_the_tasks_behind_it_as_pending(
        make_queue: Callable[..., TaskQueue], gate: Gate, registry: CollectorRegistry,
        scrape: Callable[[], Families]) -> None:
    queue = make_queue(workers=1, maxsize=10, name="held")
    registry.register(TaskQueueCollector(queue))

    @queue.task(name="hold")
    def hold() -> str:
        return gate.wait()

    @queue.task(name="after")
    def after(n: int) -> int:
        return n

    # Given the only worker held inside a task, and three tasks behind it
    queue.submit(hold.task())
    gate.wait_for_arrivals(1)
    behind = [after.submit(n) for n in range(3)]

    # When scraped, then one runs and three wait for a worker
    families = scrape()
    assert gauges(families, "held") == {
        "taskqueue_tasks_pending": 3, "taskqueue_tasks_scheduled": 0,
        "taskqueue_tasks_running": 1, "taskqueue_queue_capacity": 10,
        "taskqueue_dead_letters": 0, "taskqueue_workers": 1,
    }
    assert counters(families, "held") == {
        "hold": {"submitted": 1, "succeeded": 0, "failed": 0, "retried": 0, "cancelled": 0},
        "after": {"submitted": 3, "succeeded": 0, "failed": 0, "retried": 0, "cancelled": 0},
    }
    # the held task's attempt has started (waited) and not ended (no run time yet)
    assert histogram(families, "taskqueue_task_wait_seconds", "held", "hold")["count"] == 1
    assert histogram(families, "taskqueue_task_run_seconds", "held", "hold")["count"] == 0

    # And once the worker is let go, everything has run
    gate.open()
    assert queue.join(WAIT)
    assert [h.result(0) for h in behind] == [0, 1, 2]
    families = scrape()
    assert gauges(families, "held")["taskqueue_tasks_pending"] == 0
    assert gauges(families, "held")["taskqueue_tasks_running"] == 0
    assert {task: c["succeeded"] for task, c in counters(families, "held").items()} \
        == {"hold": 1, "after": 3}


@pytest.mark.timeout(30)
def test_a_retry_waiting_out_its_backoff_is_scheduled_not_pending(
        make_queue: Callable[..., TaskQueue], registry: CollectorRegistry,
        scrape: Callable[[], Families]) -> None:
    queue = make_queue(workers=1, name="backoff", retries=1,
                       backoff=Backoff(base=3600, jitter=False))
    collector = TaskQueueCollector(queue)
    registry.register(collector)
    seen = Seen()
    queue.add_listener(seen)

    @queue.task(name="fails")
    def fails() -> None:
        raise OSError("down")

    handle = fails.submit()
    seen.wait_for(EventKind.RETRYING, 1)

    families = scrape()
    assert handle.state is TaskState.SCHEDULED
    assert gauges(families, "backoff")["taskqueue_tasks_scheduled"] == 1
    assert gauges(families, "backoff")["taskqueue_tasks_pending"] == 0
    assert counters(families, "backoff")["fails"]["retried"] == 1
    assert histogram(families, "taskqueue_task_run_seconds", "backoff", "fails")["count"] == 1


# -- what is counted, and from when --------------------------------------------------------

@pytest.mark.timeout(30)
def test_counting_starts_when_the_collector_is_made(
        make_queue: Callable[..., TaskQueue], registry: CollectorRegistry) -> None:
    queue = make_queue(workers=2, name="late")
    queue.submit(abs, -1).result(WAIT)
    assert queue.join(WAIT)

    registry.register(TaskQueueCollector(queue))
    queue.submit(abs, -2)
    assert queue.join(WAIT)

    assert registry.get_sample_value("taskqueue_tasks_submitted_total",
                                     {"queue": "late", "task": "abs"}) == 1
    assert registry.get_sample_value("taskqueue_tasks_succeeded_total",
                                     {"queue": "late", "task": "abs"}) == 1
    # the queue's own stats, read for the gauges, are queue-wide
    assert queue.stats().succeeded == 2


@pytest.mark.timeout(30)
def test_close_stops_counting_and_is_idempotent(
        make_queue: Callable[..., TaskQueue], registry: CollectorRegistry) -> None:
    queue = make_queue(workers=2, name="closing")
    collector = TaskQueueCollector(queue)
    registry.register(collector)
    queue.submit(abs, -1)
    assert queue.join(WAIT)

    collector.close()
    collector.close()
    queue.submit(abs, -2)
    assert queue.join(WAIT)

    labels = {"queue": "closing", "task": "abs"}
    assert registry.get_sample_value("taskqueue_tasks_submitted_total", labels) == 1
    assert registry.get_sample_value("taskqueue_tasks_succeeded_total", labels) == 1
    assert registry.get_sample_value("taskqueue_task_run_seconds_count", labels) == 1
    # the gauges are still read from the queue
    assert registry.get_sample_value("taskqueue_workers", {"queue": "closing"}) == 2
    assert "closed" in repr(collector)


@pytest.mark.timeout(30)
def test_an_event_on_its_way_when_close_returns_is_not_counted(
        make_queue: Callable[..., TaskQueue], registry: CollectorRegistry) -> None:
    # Given a listener ahead of the collector's that holds a STARTED event
    queue = make_queue(workers=1, name="racing")
    held, release = threading.Event(), threading.Event()

    def ahead(event: Event) -> None:
        if event.kind is EventKind.STARTED:
            held.set()
            release.wait(WAIT)

    queue.add_listener(ahead)
    collector = TaskQueueCollector(queue)
    registry.register(collector)
    try:
        queue.submit(abs, -1)
        assert held.wait(WAIT)
        # When the collector is closed while that event is still on its way to it
        collector.close()
    finally:
        release.set()
    assert queue.join(WAIT)

    # Then only what came before close() is counted
    labels = {"queue": "racing", "task": "abs"}
    assert registry.get_sample_value("taskqueue_tasks_submitted_total", labels) == 1
    assert registry.get_sample_value("taskqueue_task_wait_seconds_count", labels) == 0
    assert registry.get_sample_value("taskqueue_tasks_succeeded_total", labels) == 0


@pytest.mark.timeout(30)
def test_counts_stay_exact_under_many_workers_at_once(
        make_queue: Callable[..., TaskQueue], registry: CollectorRegistry,
        shaken: None) -> None:
    queue = make_queue(workers=8, maxsize=0, name="busy")
    registry.register(TaskQueueCollector(queue, buckets=[0.5]))

    @queue.task(name="noop")
    def noop(n: int) -> int:
        return n

    for n in range(2000):
        noop.submit(n)
    assert queue.join(WAIT)

    labels = {"queue": "busy", "task": "noop"}
    for sample in ("taskqueue_tasks_submitted_total", "taskqueue_tasks_succeeded_total",
                   "taskqueue_task_wait_seconds_count", "taskqueue_task_run_seconds_count"):
        assert registry.get_sample_value(sample, labels) == 2000, sample
    assert registry.get_sample_value("taskqueue_task_run_seconds_bucket",
                                     dict(labels, le="+Inf")) == 2000
    assert registry.get_sample_value("taskqueue_queue_capacity", {"queue": "busy"}) == 0  # unbounded


@pytest.mark.timeout(30)
def test_a_task_failed_without_an_attempt_is_counted_but_not_timed(
        make_queue: Callable[..., TaskQueue], registry: CollectorRegistry,
        caplog: pytest.LogCaptureFixture) -> None:
    # Given a pool whose initializer fails once a task has been accepted
    caplog.set_level(logging.CRITICAL, logger="taskqueue")
    accepted = threading.Event()

    def init() -> None:
        accepted.wait(WAIT)
        raise RuntimeError("no database")

    queue = make_queue(workers=1, name="broken", initializer=init)
    registry.register(TaskQueueCollector(queue))
    seen = Seen()
    queue.add_listener(seen)
    handle = queue.submit(abs, -1)
    accepted.set()

    # When the task fails with the pool, never having started
    seen.wait_for(EventKind.FAILED, 1)
    assert handle.state is TaskState.FAILED and handle.attempts == 0

    # Then it is counted as failed, and no attempt is timed
    labels = {"queue": "broken", "task": "abs"}
    assert registry.get_sample_value("taskqueue_tasks_failed_total", labels) == 1
    assert registry.get_sample_value("taskqueue_task_wait_seconds_count", labels) == 0
    assert registry.get_sample_value("taskqueue_task_run_seconds_count", labels) == 0


@pytest.mark.timeout(30)
def test_registered_task_functions_have_zero_series_before_they_run(
        make_queue: Callable[..., TaskQueue], registry: CollectorRegistry) -> None:
    queue = make_queue(name="idle")
    registry.register(TaskQueueCollector(queue))

    @queue.task(name="never_run")
    def never_run() -> None:
        """Registered only."""

    labels = {"queue": "idle", "task": "never_run"}
    for what in COUNTERS:
        assert registry.get_sample_value(f"taskqueue_tasks_{what}_total", labels) == 0
    assert registry.get_sample_value("taskqueue_task_run_seconds_count", labels) == 0
    assert registry.get_sample_value("taskqueue_task_run_seconds_bucket",
                                     dict(labels, le="+Inf")) == 0


# -- buckets ------------------------------------------------------------------------------

@pytest.mark.timeout(30)
@pytest.mark.parametrize("buckets", [
    [], [0, 1], [-1.0, 1], [1, 1], [2, 1], [float("nan")], [math.inf, 1],
    [1, math.inf, 2], [math.inf], [10 ** 400],
])
def test_bad_buckets_raise_a_value_error_naming_buckets(
        make_queue: Callable[..., TaskQueue], buckets: List[float]) -> None:
    with pytest.raises(ValueError, match="buckets"):
        TaskQueueCollector(make_queue(), buckets=buckets)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("buckets", ["0.1", 5, [0.1, "1"], [True], [None]])
def test_buckets_of_the_wrong_type_raise_a_type_error_naming_buckets(
        make_queue: Callable[..., TaskQueue], buckets: Any) -> None:
    with pytest.raises(TypeError, match="buckets"):
        TaskQueueCollector(make_queue(), buckets=buckets)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("buckets, bounds", [
    ((0.5, 2), [0.5, 2]),
    ([0.25, 1, math.inf], [0.25, 1]),  # prometheus_client's style, ending with +Inf
    (iter([3]), [3]),
])
def test_buckets_given_are_the_bounds_served(
        make_queue: Callable[..., TaskQueue], registry: CollectorRegistry,
        scrape: Callable[[], Families], buckets: Any, bounds: List[float]) -> None:
    queue = make_queue(name="bucketed")
    registry.register(TaskQueueCollector(queue, buckets=buckets))
    queue.submit(abs, -1)
    assert queue.join(WAIT)

    families = scrape()
    for name in HISTOGRAMS:
        series = histogram(families, name, "bucketed", "abs")
        assert [le for le, _ in series["buckets"]] == les(bounds)
        assert series["count"] == 1


@pytest.mark.timeout(30)
def test_an_observation_on_a_bound_falls_in_that_bucket_and_sums_are_exact(
        make_queue: Callable[..., TaskQueue], registry: CollectorRegistry,
        fake_clock: FakeClock) -> None:
    # Given a queue on a fake clock, which only the tasks move on
    queue = make_queue(workers=1, name="timed", clock=fake_clock, wait=fake_clock.wait)
    registry.register(TaskQueueCollector(queue, buckets=[0.25, 0.5, 1]))

    @queue.task(name="takes")
    def takes(seconds: float) -> None:
        fake_clock.advance(seconds)

    # When one attempt runs exactly 0.5 s and another 2 s, neither having waited
    takes.submit(0.5).result(WAIT)
    takes.submit(2.0).result(WAIT)
    assert queue.join(WAIT)

    # Then the first is in le="0.5" (Prometheus buckets are <=), the second only in +Inf
    labels = {"queue": "timed", "task": "takes"}

    def bucket(name: str, le: str) -> float:
        return registry.get_sample_value(f"{name}_bucket", dict(labels, le=le))

    run = "taskqueue_task_run_seconds"
    assert [bucket(run, le) for le in ("0.25", "0.5", "1.0", "+Inf")] == [0, 1, 1, 2]
    assert registry.get_sample_value(f"{run}_sum", labels) == 2.5
    wait = "taskqueue_task_wait_seconds"
    assert [bucket(wait, le) for le in ("0.25", "0.5", "1.0", "+Inf")] == [2, 2, 2, 2]
    assert registry.get_sample_value(f"{wait}_sum", labels) == 0


# -- the collector's contract with prometheus_client and its callers -----------------------

class CountingQueue(TaskQueue):
    """A queue that counts calls of stats(), and can be made to fail them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stats_calls = 0
        self.stats_error: Any = None

    def stats(self) -> Any:
        self.stats_calls += 1
        if self.stats_error is not None:
            raise self.stats_error
        return super().stats()


@pytest.fixture
def counting_queue() -> Iterator[CountingQueue]:
    """A CountingQueue, always shut down."""
    queue = CountingQueue(workers=1, name="counted")
    yield queue
    queue.shutdown(cancel_futures=True, timeout=WAIT)


@pytest.mark.timeout(30)
def test_registering_describes_without_collecting(
        counting_queue: CountingQueue, registry: CollectorRegistry) -> None:
    collector = TaskQueueCollector(counting_queue)
    registry.register(collector)
    assert counting_queue.stats_calls == 0

    described = {(m.name, m.type) for m in collector.describe()}
    collected = {(m.name, m.type) for m in collector.collect()}
    assert described == collected == {(n.replace("_total", ""), t) for n, t in FAMILIES.items()}
    assert all(not m.samples for m in collector.describe())
    assert counting_queue.stats_calls == 1
    # the names are claimed: the same collector cannot be registered twice
    with pytest.raises(ValueError):
        registry.register(collector)


@pytest.mark.timeout(30)
def test_a_failing_stats_leaves_out_the_gauges_and_serves_the_rest(
        counting_queue: CountingQueue, registry: CollectorRegistry,
        scrape: Callable[[], Families], caplog: pytest.LogCaptureFixture) -> None:
    registry.register(TaskQueueCollector(counting_queue))
    counting_queue.submit(abs, -1)
    assert counting_queue.join(WAIT)
    counting_queue.stats_error = BrokerError("Redis at redis://example cannot be used")

    with caplog.at_level(logging.WARNING, logger="taskqueue.metrics"):
        families = scrape()

    assert gauges(families, "counted") == {}
    assert counters(families, "counted")["abs"]["succeeded"] == 1
    assert any("stats() failed" in r.getMessage() and "redis://example" in r.getMessage()
               for r in caplog.records)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("queue", [None, "queue", object()])
def test_anything_but_a_task_queue_raises_a_type_error_naming_queue(queue: Any) -> None:
    with pytest.raises(TypeError, match="queue must be a TaskQueue"):
        TaskQueueCollector(queue)


@pytest.mark.timeout(30)
def test_public_names_have_docstrings() -> None:
    import taskqueue.metrics as metrics

    assert metrics.__doc__ and "registry.register(TaskQueueCollector(queue))" in metrics.__doc__
    assert TaskQueueCollector.__doc__
    for method in ("describe", "collect", "close"):
        assert getattr(TaskQueueCollector, method).__doc__, method


@pytest.mark.timeout(30)
def test_without_prometheus_client_the_import_error_says_what_to_install() -> None:
    # In a fresh interpreter, so no module of this one is reloaded.
    code = textwrap.dedent("""
        import sys
        sys.modules["prometheus_client"] = None  # as if it were not installed
        import taskqueue  # the package itself never needs it
        try:
            import taskqueue.metrics
        except ImportError as exc:
            print(type(exc).__name__, exc.name)
            print(exc)
        else:
            print("imported")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=WAIT, check=True)
    assert done.stdout.splitlines() == [
        "ImportError prometheus_client",
        "taskqueue.metrics needs prometheus_client: pip install 'taskqueue[metrics]'",
    ]


# -- several queues, one collector ---------------------------------------------------------

class ListeningQueue(TaskQueue):
    """A queue that keeps the listeners added to it and removed from it.

    ``refuse_listeners`` makes add_listener raise QueueClosed, as a queue of a
    parent process does in a forked child.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.added: List[Any] = []
        self.removed: List[Any] = []
        self.refuse_listeners = False

    def add_listener(self, callback: Any) -> None:
        if self.refuse_listeners:
            raise QueueClosed(f"{self.name} belongs to another process")
        super().add_listener(callback)
        self.added.append(callback)

    def remove_listener(self, callback: Any) -> None:
        super().remove_listener(callback)
        self.removed.append(callback)


@pytest.fixture
def make_listening_queue() -> Iterator[Callable[..., ListeningQueue]]:
    """Yield a factory of ListeningQueues; every queue made is shut down afterwards."""
    made: List[ListeningQueue] = []

    def make(**kwargs: Any) -> ListeningQueue:
        queue = ListeningQueue(**kwargs)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.shutdown(cancel_futures=True, timeout=WAIT)


@pytest.mark.timeout(30)
def test_one_collector_serves_two_queues_with_exact_counts_gauges_and_histograms_per_queue(
        make_queue: Callable[..., TaskQueue], gate: Gate, registry: CollectorRegistry,
        scrape: Callable[[], Families]) -> None:
    # Given two queues, each with a task named "ping", and one collector of both
    email = make_queue(workers=2, maxsize=20, name="email",
                       backoff=Backoff(base=0.001, jitter=False))
    billing = make_queue(workers=1, maxsize=5, name="billing")
    collector = TaskQueueCollector(email, billing)
    registry.register(collector)
    seen = {"email": Seen(), "billing": Seen()}
    email.add_listener(seen["email"])
    billing.add_listener(seen["billing"])

    @email.task(name="send", retries=1)
    def send(to: str) -> str:
        if to == "nobody":
            raise OSError("550 no such user")
        return to

    @email.task(name="ping")
    def email_ping() -> str:
        return "pong"

    @billing.task(name="ping")
    def billing_ping() -> str:
        return "pong"

    @billing.task(name="charge")
    def charge(cents: int) -> int:
        return cents

    @billing.task(name="hold")
    def hold() -> str:
        return gate.wait()

    # When email sends four, fails one for good (two attempts) and pings twice ...
    sent = [send.submit(to) for to in ("a", "b", "c", "d", "nobody")]
    pings = [email_ping.submit(), email_ping.submit()]
    assert email.join(WAIT)
    assert [h.state for h in sent] == [TaskState.SUCCEEDED] * 4 + [TaskState.FAILED]
    assert [h.result(0) for h in pings] == ["pong", "pong"]
    # ... and billing charges three and pings once, then its only worker is
    # held while two more charges wait behind it
    assert [charge.submit(n).result(WAIT) for n in (1, 2, 3)] == [1, 2, 3]
    assert billing_ping.submit().result(WAIT) == "pong"
    assert billing.join(WAIT)
    held = hold.submit()
    gate.wait_for_arrivals(1)
    seen["billing"].wait_for(EventKind.STARTED, 5)  # 3 charges, 1 ping, and hold
    behind = [charge.submit(n) for n in (4, 5)]
    seen["email"].wait_for(EventKind.SUCCEEDED, 6)
    families = scrape()

    # Then each metric is one family, holding both queues' samples
    assert {name: f.type for name, f in families.items() if name.startswith("taskqueue_")} \
        == FAMILIES
    for family in FAMILIES:
        suffix = "_total" if FAMILIES[family] == "counter" else ""
        assert scrape.text.count(f"# TYPE {family}{suffix} ") == 1, family  # type: ignore
        assert {s.labels["queue"] for s in families[family].samples} == {"email", "billing"}
    # the counters, exactly, per queue: the two "ping"s are told apart
    assert counters(families, "email") == {
        "send": {"submitted": 5, "succeeded": 4, "failed": 1, "retried": 1, "cancelled": 0},
        "ping": {"submitted": 2, "succeeded": 2, "failed": 0, "retried": 0, "cancelled": 0},
    }
    assert counters(families, "billing") == {
        "charge": {"submitted": 5, "succeeded": 3, "failed": 0, "retried": 0, "cancelled": 0},
        "ping": {"submitted": 1, "succeeded": 1, "failed": 0, "retried": 0, "cancelled": 0},
        "hold": {"submitted": 1, "succeeded": 0, "failed": 0, "retried": 0, "cancelled": 0},
    }
    # the gauges, per queue
    assert gauges(families, "email") == {
        "taskqueue_tasks_pending": 0, "taskqueue_tasks_scheduled": 0,
        "taskqueue_tasks_running": 0, "taskqueue_queue_capacity": 20,
        "taskqueue_dead_letters": 1, "taskqueue_workers": 2,
    }
    assert gauges(families, "billing") == {
        "taskqueue_tasks_pending": 2, "taskqueue_tasks_scheduled": 0,
        "taskqueue_tasks_running": 1, "taskqueue_queue_capacity": 5,
        "taskqueue_dead_letters": 0, "taskqueue_workers": 1,
    }
    # the histograms, per queue: one wait per attempt started, one run per attempt ended
    expected = {
        ("email", "send"): (6, 6), ("email", "ping"): (2, 2),
        ("billing", "charge"): (3, 3), ("billing", "ping"): (1, 1), ("billing", "hold"): (1, 0),
    }
    for (queue, task), (waits, runs) in expected.items():
        for name, count in zip(HISTOGRAMS, (waits, runs)):
            series = histogram(families, name, queue, task)
            assert series["count"] == count, (name, queue, task)
            assert [le for le, _ in series["buckets"]] == les(DEFAULT_BUCKETS)
            assert series["buckets"][-1] == ("+Inf", count), (name, queue, task)

    # And once billing's worker is let go, only billing's counts move
    gate.open()
    assert held.result(WAIT) == "through" and [h.result(WAIT) for h in behind] == [4, 5]
    assert billing.join(WAIT)
    families = scrape()
    assert counters(families, "billing")["charge"]["succeeded"] == 5
    assert counters(families, "billing")["hold"]["succeeded"] == 1
    assert gauges(families, "billing")["taskqueue_tasks_running"] == 0
    assert counters(families, "email")["send"]["succeeded"] == 4
    assert repr(collector) == "<TaskQueueCollector of 'email', 'billing'>"


@pytest.mark.timeout(30)
def test_two_queues_of_one_name_are_refused_naming_the_name_and_nothing_is_listened_to(
        make_listening_queue: Callable[..., ListeningQueue]) -> None:
    first = make_listening_queue(name="email")
    other = make_listening_queue(name="billing")
    twin = make_listening_queue(name="email")

    with pytest.raises(ValueError, match=r"more_queues\[1\] is named 'email', as queue is"):
        TaskQueueCollector(first, other, twin)
    with pytest.raises(ValueError, match=r"more_queues\[0\] is queue again: .*'email' given twice"):
        TaskQueueCollector(first, first)
    # checked before any listener is added: nothing is left listening
    assert first.added == other.added == twin.added == []


@pytest.mark.timeout(30)
def test_a_queue_refusing_its_listener_leaves_none_on_the_others(
        make_listening_queue: Callable[..., ListeningQueue]) -> None:
    first = make_listening_queue(name="email")
    forked = make_listening_queue(name="billing")
    forked.refuse_listeners = True

    with pytest.raises(QueueClosed):
        TaskQueueCollector(first, forked)
    assert len(first.added) == 1 and first.removed == first.added
    assert forked.added == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("more", [None, "billing", object()])
def test_anything_but_a_task_queue_among_more_queues_raises_a_type_error_naming_it(
        make_queue: Callable[..., TaskQueue], more: Any) -> None:
    queue = make_queue(name="email")
    with pytest.raises(TypeError, match=r"more_queues\[1\] must be a TaskQueue"):
        TaskQueueCollector(queue, make_queue(name="billing"), more)


@pytest.mark.timeout(30)
def test_no_queue_or_a_list_of_queues_raises_a_type_error_saying_what_to_pass(
        make_queue: Callable[..., TaskQueue]) -> None:
    with pytest.raises(TypeError, match="'queue'"):
        TaskQueueCollector()  # type: ignore[call-arg]
    queues = [make_queue(name="email"), make_queue(name="billing")]
    hint = r"queue must be a TaskQueue, got \[.*\] \(pass .*: TaskQueueCollector\(\*queues\)\)"
    with pytest.raises(TypeError, match=hint):
        TaskQueueCollector(queues)  # type: ignore[arg-type]


@pytest.mark.timeout(30)
def test_a_second_collector_on_one_registry_is_refused_and_the_first_still_served(
        make_queue: Callable[..., TaskQueue], registry: CollectorRegistry,
        scrape: Callable[[], Families]) -> None:
    # The documented answer is one collector for all the queues; a collector
    # per queue is refused by prometheus_client itself, at register().
    assert "one collector for all your queues" in TaskQueueCollector.__doc__.lower()
    email, billing = make_queue(name="email"), make_queue(name="billing")
    registry.register(TaskQueueCollector(email))
    second = TaskQueueCollector(billing)
    try:
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            registry.register(second)
    finally:
        second.close()
    email.submit(abs, -1)
    assert email.join(WAIT)

    families = scrape()
    assert counters(families, "email")["abs"]["succeeded"] == 1
    assert gauges(families, "billing") == {}
    assert {s.labels["queue"] for s in families["taskqueue_workers"].samples} == {"email"}


@pytest.mark.timeout(30)
def test_close_stops_counting_on_every_queue_and_unregister_stops_serving(
        make_listening_queue: Callable[..., ListeningQueue], registry: CollectorRegistry,
        scrape: Callable[[], Families]) -> None:
    email = make_listening_queue(workers=1, name="email")
    billing = make_listening_queue(workers=1, name="billing")
    collector = TaskQueueCollector(email, billing)
    registry.register(collector)
    for queue in (email, billing):
        queue.submit(abs, -1)
        assert queue.join(WAIT)

    # When closed (twice), then more tasks run on both queues
    collector.close()
    collector.close()
    for queue in (email, billing):
        queue.submit(abs, -2)
        assert queue.join(WAIT)

    # Then both listeners are gone, what came before is still served, and the gauges are live
    for queue in (email, billing):
        assert len(queue.added) == 1 and queue.removed == queue.added
    families = scrape()
    for name in ("email", "billing"):
        assert counters(families, name)["abs"]["submitted"] == 1
        assert counters(families, name)["abs"]["succeeded"] == 1
        assert histogram(families, "taskqueue_task_run_seconds", name, "abs")["count"] == 1
        assert gauges(families, name)["taskqueue_workers"] == 1
    assert "closed" in repr(collector)

    # And once unregistered, nothing of ours is served
    registry.unregister(collector)
    assert not [name for name in scrape() if name.startswith("taskqueue_")]


@pytest.mark.timeout(30)
def test_a_failing_stats_of_one_queue_leaves_out_only_its_gauges(
        counting_queue: CountingQueue, make_queue: Callable[..., TaskQueue],
        registry: CollectorRegistry, scrape: Callable[[], Families],
        caplog: pytest.LogCaptureFixture) -> None:
    other = make_queue(workers=2, name="other")
    registry.register(TaskQueueCollector(counting_queue, other))
    assert counting_queue.stats_calls == 0  # registering only describes
    for queue in (counting_queue, other):
        queue.submit(abs, -1)
        assert queue.join(WAIT)
    counting_queue.stats_error = BrokerError("Redis at redis://example cannot be used")

    with caplog.at_level(logging.WARNING, logger="taskqueue.metrics"):
        families = scrape()

    assert gauges(families, "counted") == {}
    assert gauges(families, "other")["taskqueue_workers"] == 2
    assert counters(families, "counted")["abs"]["succeeded"] == 1
    assert counters(families, "other")["abs"]["succeeded"] == 1
    warnings = [r.getMessage() for r in caplog.records if "stats() failed" in r.getMessage()]
    assert len(warnings) == 1 and "counted" in warnings[0] and "other" not in warnings[0]
