"""The broker contract: what every Broker must do, as one suite run against each.

Huey runs one storage test mixin against every backend; this is the same for
brokers. A test class per broker (``tests/test_brokers.py``, and one per
broker added later) mixes :class:`BrokerContract` in and says how to make
its broker with ``make_broker(tmp_path)``. The first half drives the broker
by hand, as a worker would, one step at a time on a fake clock; the second
runs a whole TaskQueue on it.

Tasks are registered task functions (``echo``, ``fail``, ``hold``): a
durable broker stores their names, never a callable.

A shared broker (``broker.shared``: workers in other processes) tells the
producer of outcomes a moment after the worker reports them, so the suite
waits for a handle's outcome before it looks at the handle's state; and its
due times are real time, so a subclass may set a short ``DELAY`` and let
``pass_time`` wait instead of moving the fake clock.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from conftest import WAIT, FakeClock, Gate, assert_settled
from taskqueue import Backoff, QueueClosed, QueueFull, Task, TaskFailed, TaskQueue, TaskState
from taskqueue.brokers import Binding, Broker
from taskqueue.message import MessageMaker
from taskqueue.registry import Registry
from taskqueue.retry import RetryPolicy
from taskqueue.settle import Settle
from taskqueue.events import Listeners
from taskqueue.stats import WorkerTally

pytestmark = pytest.mark.timeout(60)


class Harness:
    """A broker bound by hand: what a TaskQueue would give it, and what a worker does."""

    def __init__(self, broker: Broker, clock: FakeClock, maxsize: int = 0,
                 dead_letter_limit: int = 100) -> None:
        self.broker = broker
        self.clock = clock
        self.registry = Registry(lambda task: None)  # submitting is the harness's own
        self.echo = self.registry.register(lambda value=None: value, name="echo")
        self.fail = self.registry.register(_fail, name="fail")
        self.settle = Settle(broker, Listeners(), clock)
        self.maker = MessageMaker(RetryPolicy(0, Backoff.none(), (Exception,)),
                                  self.settle.cancel, clock)
        broker.bind(Binding(name="contract", maxsize=maxsize, dead_letter_limit=dead_letter_limit,
                            clock=clock, wait=clock.wait, exempt=lambda: False,
                            lookup=self.registry.tasks.get, message_for=self.maker.for_task))
        broker.start()
        self.consumer = broker.consumer(WorkerTally())

    def submit(self, fn: Any = None, *args: Any, block: bool = True, **options: Any) -> Any:
        task = Task(fn or self.echo, args, name=(fn or self.echo).name, **options)
        return self.broker.enqueue(self.maker.for_task(task), block, None)

    def take(self) -> Any:
        """Receive the next message (it must be there), as a worker does."""
        done = threading.Event()
        box: List[Any] = []

        def receive() -> None:
            box.append(self.consumer.receive())
            done.set()

        threading.Thread(target=receive, daemon=True).start()
        assert done.wait(WAIT), "nothing to receive"
        return box[0]

    def run(self, message: Any) -> Optional[Any]:
        """Run one attempt of ``message`` and settle it; return a retry kept to run next."""
        try:
            result = message.fn(*message.args, **(message.kwargs or {}))
        except Exception as exc:
            kept = self.settle.failed(self.consumer, message, exc)
        else:
            self.settle.succeeded(self.consumer, message, result)
            kept = None
        self.consumer.flush()  # as a worker's next receive would
        return kept

    def close(self) -> None:
        self.broker.close()
        self.broker.stop_consumers()
        self.consumer.crashed()  # pays what it owes
        self.broker.shutdown()


def _fail(reason: str = "no") -> None:
    raise ConnectionError(reason)


def eventually(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Whether ``condition()`` comes true within ``timeout`` (looked at every 5 ms).

    For what another process or thread reports asynchronously (a shared
    broker's outcomes), where there is nothing local to wait on.
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() >= deadline:
            return False
        pause.wait(0.005)
    return True


def failed_with(exc: Optional[BaseException], kind: type) -> bool:
    """Whether ``exc`` is the task's ``kind`` error: itself, or as a shared broker reports it."""
    if isinstance(exc, TaskFailed):  # it crossed processes as data
        return exc.type_name == kind.__name__
    return isinstance(exc, kind)


class BrokerContract:
    """Every broker passes these; subclasses define ``make_broker(tmp_path) -> Broker``."""

    DELAY = 30.0
    """Seconds of the delays and backoffs the suite uses."""

    def make_broker(self, tmp_path: Path) -> Broker:  # pragma: no cover - abstract
        raise NotImplementedError

    def pass_time(self, harness: Harness, seconds: float) -> None:
        """Let ``seconds`` pass for the broker: the fake clock moves."""
        harness.clock.advance(seconds)

    @pytest.fixture
    def harness(self, tmp_path: Path, fake_clock: FakeClock) -> Iterator[Harness]:
        made = Harness(self.make_broker(tmp_path), fake_clock)
        yield made
        made.close()

    @pytest.fixture
    def queues(self, tmp_path: Path) -> Iterator[Callable[..., TaskQueue]]:
        made: List[TaskQueue] = []

        def make(**kwargs: Any) -> TaskQueue:
            queue = TaskQueue(broker=self.make_broker(tmp_path / f"q{len(made)}"), **kwargs)
            made.append(queue)
            if queue.broker.shared:  # it consumes only where start() is called
                queue.start()
            return queue

        yield make
        for queue in made:
            queue.shutdown(cancel_futures=True, timeout=WAIT)

    # -- by hand: receiving ----------------------------------------------------------------

    def test_a_message_taken_in_is_received_started(self, harness: Harness) -> None:
        handle = harness.submit(harness.echo, 7)
        assert handle.state is TaskState.PENDING
        message = harness.take()
        assert message.handle is handle or message.id == handle.id
        assert message.attempts == 1 and harness.consumer.current is message
        assert message.handle.state is TaskState.RUNNING
        assert harness.run(message) is None
        assert handle.result(WAIT) == 7
        assert harness.broker.wait_idle(WAIT)

    def test_higher_priority_first_then_in_submission_order(self, harness: Harness) -> None:
        for label, priority in [("low1", 0), ("high1", 5), ("low2", 0), ("high2", 5), ("mid", 1)]:
            harness.submit(harness.echo, label, priority=priority)
        order = []
        for _ in range(5):
            message = harness.take()
            order.append(message.args[0])
            harness.run(message)
        assert order == ["high1", "high2", "mid", "low1", "low2"]

    def test_a_delayed_message_is_received_only_once_due(self, harness: Harness) -> None:
        submitted = time.monotonic()
        handle = harness.submit(harness.echo, "late", delay=self.DELAY)
        harness.submit(harness.echo, "now")
        assert harness.take().args[0] == "now"  # the delayed one does not come first
        assert handle.state is TaskState.SCHEDULED
        self.pass_time(harness, self.DELAY)
        message = harness.take()
        assert message.args[0] == "late"
        if harness.broker.shared:  # due times are real time there
            assert time.monotonic() - submitted >= self.DELAY * 0.9
        harness.run(message)
        assert handle.result(WAIT) == "late"

    # -- by hand: outcomes -------------------------------------------------------------------

    def test_a_failure_without_retries_is_a_dead_letter(self, harness: Harness) -> None:
        handle = harness.submit(harness.fail, "boom")
        harness.run(harness.take())
        assert "boom" in str(handle.exception(WAIT))
        assert handle.state is TaskState.FAILED
        letters = harness.broker.dead_letters()
        assert [letter.task_id for letter in letters] == [handle.id]
        assert letters[0].attempts == 1
        assert harness.broker.counts().dead_letters == 1
        assert harness.broker.wait_idle(WAIT)

    def test_a_retry_waits_out_its_backoff_in_the_broker(self, harness: Harness) -> None:
        handle = harness.submit(harness.fail, retries=1, backoff=Backoff.constant(self.DELAY))
        kept = harness.run(harness.take())
        assert kept is None
        assert eventually(lambda: handle.state is TaskState.SCHEDULED)
        assert not harness.broker.wait_idle(0)
        self.pass_time(harness, self.DELAY)
        again = harness.take()
        assert again.attempts == 2
        harness.run(again)
        assert handle.exception(WAIT) is not None
        assert handle.state is TaskState.FAILED and handle.attempts == 2

    def test_a_retry_due_at_once_comes_back(self, harness: Harness) -> None:
        handle = harness.submit(harness.fail, retries=2, backoff=Backoff.none())
        message = harness.take()
        for attempt in (1, 2):
            kept = harness.run(message)
            if kept is not None:  # this consumer keeps it, to run next
                assert harness.consumer.resume(kept)
                message = kept
            else:
                message = harness.take()
            assert message.attempts == attempt + 1
        harness.run(message)
        assert handle.exception(WAIT) is not None
        assert handle.state is TaskState.FAILED and handle.attempts == 3

    # -- by hand: cancelling, sealing, closing ------------------------------------------------

    def test_a_cancelled_message_is_never_received_and_counted_once(self, harness: Harness) -> None:
        cancelled = harness.submit(harness.echo, "gone")
        kept = harness.submit(harness.echo, "kept")
        assert cancelled.cancel() and cancelled.cancel()
        assert cancelled.state is TaskState.CANCELLED
        message = harness.take()
        assert message.args[0] == "kept"
        harness.run(message)
        assert kept.result(WAIT) == "kept"
        counts = harness.broker.counts()
        assert (counts.submitted, counts.cancelled) == (2, 1)
        assert harness.broker.wait_idle(WAIT)

    def test_a_running_message_cannot_be_cancelled(self, harness: Harness) -> None:
        handle = harness.submit(harness.echo, 1)
        message = harness.take()
        assert handle.cancel() is False
        harness.run(message)
        assert handle.result(WAIT) == 1

    def test_seal_takes_out_everything_not_started_and_refuses_more(self, harness: Harness) -> None:
        queued = harness.submit(harness.echo, 1)
        scheduled = harness.submit(harness.echo, 2, delay=60)
        taken = harness.broker.seal()
        assert {m.id for m in taken} == {queued.id, scheduled.id}
        harness.settle.cancel_all(taken)
        assert queued.cancelled() and scheduled.cancelled()
        assert not harness.broker.accepting
        with pytest.raises(QueueClosed):
            harness.submit(harness.echo, 3)
        assert isinstance(harness.broker.closed_error(), QueueClosed)
        assert harness.broker.wait_idle(WAIT)

    def test_stopped_consumers_drain_then_receive_none(self, harness: Harness) -> None:
        handle = harness.submit(harness.echo, 1)
        harness.broker.stop_consumers()
        if harness.broker.shared:
            # The queue is not this process's to drain: the task stays for others.
            assert harness.take() is None
            assert handle.state is TaskState.PENDING
            assert harness.broker.counts().submitted == 1 and not harness.broker.wait_idle(0)
            return
        message = harness.take()
        assert message is not None
        harness.run(message)
        assert harness.take() is None

    def test_a_crashed_consumer_puts_back_what_it_held(self, harness: Harness) -> None:
        handle = harness.submit(harness.echo, "again")
        first = harness.take()
        harness.consumer.crashed()  # the worker died mid-attempt
        assert eventually(lambda: handle.state is TaskState.PENDING)
        second = harness.take()
        assert second.args == first.args and second.attempts == 2
        harness.run(second)
        assert handle.result(WAIT) == "again" and handle.attempts == 2

    # -- by hand: admission ---------------------------------------------------------------------

    def test_a_full_broker_refuses_without_blocking_and_takes_nothing(
            self, tmp_path: Path, fake_clock: FakeClock) -> None:
        harness = Harness(self.make_broker(tmp_path), fake_clock, maxsize=2)
        try:
            harness.submit(harness.echo, 1)
            harness.submit(harness.echo, 2)
            with pytest.raises(QueueFull):
                harness.submit(harness.echo, 3, block=False)
            assert harness.broker.counts().submitted == 2
        finally:
            harness.close()

    def test_a_live_key_returns_its_holders_handle(self, harness: Harness) -> None:
        first = harness.submit(harness.echo, 1, key="k")
        assert harness.submit(harness.echo, 2, key="k") is first or \
            harness.submit(harness.echo, 2, key="k").id == first.id
        harness.run(harness.take())
        assert first.result(WAIT) == 1
        second = harness.submit(harness.echo, 3, key="k")
        assert second.id != first.id

    # -- by hand: dead letters ------------------------------------------------------------------

    def test_a_dead_letter_is_requeued_once(self, harness: Harness) -> None:
        harness.submit(harness.fail)
        harness.run(harness.take())
        letter = harness.broker.dead_letters()[0]
        again = harness.broker.requeue(letter, harness.maker.for_task(letter.task))
        assert harness.broker.dead_letters() == []
        with pytest.raises(ValueError):
            harness.broker.requeue(letter, harness.maker.for_task(letter.task))
        message = harness.take()
        assert message.id == again.id
        harness.run(message)

    def test_purge_forgets_every_dead_letter(self, harness: Harness) -> None:
        for _ in range(3):
            harness.submit(harness.fail)
            harness.run(harness.take())
        assert harness.broker.purge_dead() == 3
        assert harness.broker.dead_letters() == []
        assert harness.broker.counts().dead_letters == 0

    # -- a whole queue on the broker ---------------------------------------------------------------

    def test_a_queue_on_it_runs_retries_and_counts_exactly(
            self, queues: Callable[..., TaskQueue]) -> None:
        queue = queues(workers=3, retries=2, backoff=Backoff.none())
        flaky = queue.task(name="flaky")(_flaky_every_third())
        ok = queue.task(name="ok")(lambda x: x * 2)
        handles = [flaky.submit(i) for i in range(30)] + [ok.submit(i) for i in range(30)]
        assert queue.join(WAIT)
        assert [h.result(0) for h in handles[30:]] == [i * 2 for i in range(30)]
        assert_settled(queue, handles)
        assert queue.stats().retried == sum(h.attempts - 1 for h in handles)

    def test_a_queue_on_it_keeps_and_requeues_dead_letters(
            self, queues: Callable[..., TaskQueue]) -> None:
        queue = queues(workers=2)
        switch = {"fail": True}

        @queue.task(name="charge")
        def charge(order: int) -> int:
            if switch["fail"]:
                raise ConnectionError("gateway down")
            return order

        failed = charge.submit(42)
        assert failed_with(failed.exception(WAIT), ConnectionError)
        letter = queue.dead_letters()[0]
        assert letter.task_id == failed.id and letter.task.args == (42,)
        switch["fail"] = False
        assert queue.requeue(letter).result(WAIT) == 42
        with pytest.raises(ValueError):
            queue.requeue(letter)

    def test_a_queue_on_it_cancels_what_has_not_started_at_shutdown(
            self, queues: Callable[..., TaskQueue], gate: Gate) -> None:
        queue = queues(workers=1)
        hold = queue.task(name="hold")(gate.wait)
        echo = queue.task(name="echo2")(lambda x: x)
        running = hold.submit()
        gate.wait_for_arrivals(1)
        queued = [echo.submit(i) for i in range(5)]
        delayed = echo.options(delay=60).submit(99)
        stopper = threading.Thread(target=queue.shutdown, kwargs={"cancel_futures": True})
        stopper.start()
        # What has not started is cancelled before the running task ends.
        assert eventually(lambda: all(h.cancelled() for h in queued + [delayed]))
        gate.open()
        stopper.join(WAIT)
        assert running.result(0) == "through"
        assert all(h.cancelled() for h in queued + [delayed])
        assert_settled(queue, [running, *queued, delayed])

    def test_a_queue_on_it_applies_backpressure(self, queues: Callable[..., TaskQueue],
                                                gate: Gate) -> None:
        queue = queues(workers=1, maxsize=2, submit_timeout=0.05)
        hold = queue.task(name="hold")(gate.wait)
        echo = queue.task(name="echo3")(lambda x: x)
        hold.submit()
        gate.wait_for_arrivals(1)
        echo.submit(1)
        echo.submit(2)
        with pytest.raises(QueueFull):
            echo.submit(3)
        assert queue.stats().submitted == 3
        gate.open()
        assert queue.join(WAIT)


def _flaky_every_third() -> Callable[[int], int]:
    seen: Dict[int, int] = {}
    lock = threading.Lock()

    def flaky(i: int) -> int:
        with lock:
            seen[i] = seen.get(i, 0) + 1
            tries = seen[i]
        if i % 3 == 0 and tries < 3:
            raise ConnectionError(f"{i} try {tries}")
        return i
    return flaky
