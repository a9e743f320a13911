"""Races in the pool's concurrency paths: shutdown, retries, cancels, crashes, fork.

A second reader's tests. Each one forces an interleaving with events and
gates (never a sleep), or shakes one loose by running a racy scenario many
times under ``sys.setswitchinterval(1e-6)``; every wait is bounded, so that
a hang fails the test instead of hanging the run.

Several of these began as strict xfails that showed a real bug; they now
guard the fixes.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from conftest import WAIT, FaultyBroker, Gate, assert_settled
from taskqueue import (
    Backoff,
    EventKind,
    QueueClosed,
    QueueFull,
    Retry,
    TaskHandle,
    Task,
    TaskQueue,
    TaskState,
)
from taskqueue.brokers import BrokerCounts
from taskqueue.stats import WorkerTally, snapshot

ROOT = Path(__file__).resolve().parent.parent

# A hang detector for a wait that a correct queue ends within milliseconds;
# used only where the bug makes the wait endless (an xfail would otherwise
# cost the full WAIT).
HANG = 3.0


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    """Silence the taskqueue logger: these tests make it warn a lot, on purpose."""
    logger = logging.getLogger("taskqueue")
    before = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(before)



def settle(handles: List[TaskHandle]) -> None:
    """Wait (bounded) until every handle is terminal."""
    done, not_done = cf.wait(handles, timeout=WAIT)
    assert not not_done, f"{len(not_done)} handles never ended"


class FirstAckCrashes:
    """A fault that fails the worker's code once around settling a success.

    Args:
        after: fail right after the success was settled, not before it.
    """

    def __init__(self, after: bool = False) -> None:
        self._lock = threading.Lock()
        self.faulted = False
        self.point = "after success" if after else "before success"

    def __call__(self, point: str) -> None:
        if point != self.point:
            return
        with self._lock:
            first, self.faulted = not self.faulted, True
        if first:
            raise RuntimeError(f"injected fault {point}")


def first_ack_crashes(*, after: bool = False, **kwargs: Any) -> TaskQueue:
    """A queue (on the fault seam) whose worker fails once around settling a success."""
    return TaskQueue(broker=FaultyBroker(FirstAckCrashes(after)), **kwargs)


@pytest.mark.timeout(60)
def test_a_worker_dying_after_settling_a_success_still_marks_it_done(quiet_logs: None) -> None:
    # The worker marks a success done on the queue with its next get; if it
    # dies before that, its crash handler must do it, or join() hangs.
    for workers in (1, 2, 4) * 10:
        queue = first_ack_crashes(workers=workers, after=True)
        handles = [queue.submit(abs, -n) for n in range(50)]
        assert [h.result(WAIT) for h in handles] == list(range(50))
        assert queue.join(WAIT)
        stats = queue.stats()
        assert (stats.succeeded, stats.pending, stats.running) == (50, 0, 0)
        queue.shutdown()


# -- a replacement worker is not yet known as a worker --------------------------------


@pytest.mark.timeout(60)
def test_a_replacement_worker_is_a_worker_from_its_first_task(quiet_logs: None) -> None:
    seen = []
    for _ in range(5):
        # Given a one-slot, one-worker queue whose first acknowledgement fails
        queue = first_ack_crashes(workers=1, maxsize=1)
        gate = Gate()
        first = queue.submit(gate.wait)
        gate.wait_for_arrivals(1)

        def follow_up() -> tuple:
            # A task that submits follow-up work into its own queue, and asks to join.
            try:
                queue.submit_nowait(abs, -1)
                admitted = "admitted"
            except QueueFull:
                admitted = "QueueFull"
            try:
                queue.join(0)
                joined = "join not refused"
            except RuntimeError:
                joined = "refused"
            return admitted, joined

        probe = queue.submit(follow_up)  # fills the one slot
        # When the worker dies acknowledging `first`, which is requeued behind
        # the probe, and a replacement takes the probe at once
        gate.open()
        seen.append(probe.result(WAIT))
        assert first.result(WAIT) == "through"
        queue.shutdown()
    # Then the replacement is treated as the worker it is
    assert seen == [("admitted", "refused")] * 5


# -- stats: pending must never be negative --------------------------------------------


class HandsOverOnRead(WorkerTally):
    """Worker 0's tally. Reading its ``running`` plays the other threads' next moves.

    This is the interleaving under test, with the two workers' writes done at the
    one moment they can land between the reader's reads of the two tallies: worker
    0's attempt fails and asks for an immediate retry, worker 1 takes it.
    """

    __slots__ = ("_running", "then_running")

    def __init__(self, then_running: WorkerTally) -> None:
        self.then_running = then_running
        super().__init__()

    @property  # type: ignore[override]
    def running(self) -> int:
        value = self._running
        if value:
            self._running = 0               # worker 0: the attempt failed (_settle_failure)
            self.retried += 1
            self.then_running.running = 1   # worker 1: _begin, then tally.running = 1
        return value

    @running.setter
    def running(self, value: int) -> None:
        self._running = value


@pytest.mark.timeout(10)
def test_a_retry_moving_between_workers_mid_snapshot_never_makes_pending_negative() -> None:
    # Given one task, running on worker 0, and an idle worker 1
    worker1 = WorkerTally()
    worker0 = HandsOverOnRead(then_running=worker1)
    worker0.running = 1
    # When a snapshot reads worker 0's tally, and the task moves to worker 1 before
    # the snapshot reads worker 1's
    stats = snapshot([worker0, worker1], workers=2, now=1.0,
                     read_counts=lambda: BrokerCounts(submitted=1, cancelled=0, dead_letters=0,
                                                      dead_letters_dropped=0))
    # Then the one task is counted once
    assert stats.running <= 1
    assert stats.pending >= 0


# -- done callbacks that raise BaseException -------------------------------------------


def exit_if_cancelled(handle: Any) -> None:
    """A done callback that ends its thread when its task was cancelled."""
    if handle.cancelled():
        raise SystemExit("a done callback called sys.exit()")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.timeout(30)
def test_a_refused_retry_is_acknowledged_once_even_if_its_callback_raises(
        quiet_logs: None) -> None:
    # Given a task that will fail and ask for a retry, and another that keeps running
    queue = TaskQueue(workers=2, retries=1, backoff=Backoff.constant(30))
    fails, keeps = Gate(), Gate()
    failing = queue.submit(lambda: fails.wait() and 1 / 0)
    running = queue.submit(keeps.wait)
    fails.wait_for_arrivals(1)
    keeps.wait_for_arrivals(1)
    failing.add_done_callback(exit_if_cancelled)
    try:
        # When shutdown cancels what has not started, and then the attempt fails,
        # so that its retry is refused and the worker cancels it
        queue.shutdown(cancel_futures=True, wait=False)
        fails.open()
        with pytest.raises(cf.CancelledError):
            failing.result(WAIT)
        # Then the other task is still unfinished, and join() still says so
        assert running.running()
        assert not queue.join(timeout=0.2)
    finally:
        keeps.open()
        running.exception(WAIT)
        queue.shutdown()
    assert_settled(queue, [failing, running])


@pytest.mark.timeout(30)
def test_shutdown_cancels_every_queued_task_even_if_a_callback_raises(gate: Gate) -> None:
    # Given a busy worker and four queued tasks, the first with a callback that exits
    queue = TaskQueue(workers=1)
    running = queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    queued = [queue.submit(abs, -i) for i in range(4)]
    queued[0].add_done_callback(exit_if_cancelled)
    try:
        # When shutdown cancels what has not started
        try:
            queue.shutdown(cancel_futures=True, wait=False)
        except SystemExit:
            pass  # the callback's exception may reach the caller; the cancels must not stop
        # Then every queued task is cancelled
        assert [h.state for h in queued] == [TaskState.CANCELLED] * 4
    finally:
        for handle in queued:
            handle.cancel()  # undo the damage, or the exit drain would wait for ever
        gate.open()
        running.result(WAIT)
        queue.shutdown()
    assert_settled(queue, [running] + queued)


# -- user code that calls back into the queue ---------------------------------------------


@pytest.mark.timeout(30)
def test_a_done_callback_may_call_shutdown_while_shutdown_cancels(gate: Gate) -> None:
    queue = TaskQueue(workers=1)
    running = queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    queued = [queue.submit(abs, -i) for i in range(3)]
    queued[0].add_done_callback(lambda handle: queue.shutdown())
    stopper = threading.Thread(target=queue.shutdown, kwargs={"cancel_futures": True},
                               daemon=True)
    stopper.start()
    gate.open()
    stopper.join(HANG)
    stuck = stopper.is_alive()
    for handle in queued:
        handle.cancel()  # unblocks a stuck shutdown
    stopper.join(WAIT)
    assert not stuck, "shutdown(cancel_futures=True) hung in its own done callback"
    assert running.result(WAIT) == "through"
    assert_settled(queue, [running] + queued)


# -- an exception that cannot be shown ----------------------------------------------


class Unprintable(ConnectionError):
    """An error whose repr() raises, as some third-party exceptions' do."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


@pytest.mark.timeout(30)
def test_an_exception_whose_repr_raises_is_retried_like_any_other() -> None:
    queue = TaskQueue(workers=1, retries=1, backoff=Backoff.none())
    kinds: List[str] = []
    queue.add_listener(lambda event: kinds.append(event.kind.value))
    threads: List[int] = []

    def flaky() -> str:
        threads.append(threading.get_ident())
        if len(threads) == 1:
            raise Unprintable()
        return "ok"

    handle = queue.submit(flaky)
    assert handle.result(WAIT) == "ok"
    queue.shutdown()
    assert kinds == ["submitted", "started", "retrying", "started", "succeeded"]
    assert queue.stats().retried == 1
    assert len(set(threads)) == 1  # no worker died


# -- thread identity after the workers are gone ------------------------------------


@pytest.mark.timeout(30)
def test_join_after_shutdown_from_a_new_thread_is_not_mistaken_for_a_worker() -> None:
    outcomes: List[Any] = []
    reused = 0
    for _ in range(5):
        queue = TaskQueue(workers=2)
        queue.submit(abs, -1).result(WAIT)
        workers = {t.ident for t in threading.enumerate()
                   if t.name.startswith(f"{queue.name}-worker-")}
        queue.shutdown()  # the workers have exited when this returns

        def call_join() -> None:
            reused_ident = threading.get_ident() in workers
            try:
                outcomes.append((reused_ident, queue.join(0)))
            except RuntimeError as exc:
                outcomes.append((reused_ident, exc))

        caller = threading.Thread(target=call_join)
        caller.start()
        caller.join(WAIT)
        reused += outcomes[-1][0]
    if not reused:
        pytest.skip("this platform did not reuse a thread ident")
    assert [joined for _, joined in outcomes] == [True] * 5


# -- shutdown modes -------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_shutdown_without_wait_still_honours_its_timeout(gate: Gate) -> None:
    queue = TaskQueue(workers=1)
    running = queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    queued = [queue.submit(abs, -i) for i in range(3)]
    # When shutdown returns at once but is told to drain for at most 0 seconds
    queue.shutdown(wait=False, timeout=0)
    # Then what had not started by then is cancelled, not run
    gate.open()
    settle([running] + queued)
    assert [h.state for h in queued] == [TaskState.CANCELLED] * 3
    queue.shutdown()
    assert_settled(queue, [running] + queued)


# -- fork ---------------------------------------------------------------------------


def run_script(source: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(source)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.timeout(60)
def test_remove_listener_in_a_forked_child_raises_queue_closed() -> None:
    result = run_script("""
        import os, sys
        from taskqueue import QueueClosed, TaskQueue
        queue = TaskQueue(workers=1)
        def listener(event):
            pass
        queue.add_listener(listener)
        queue.submit(abs, -1).result(10)
        pid = os.fork()
        if pid == 0:
            try:
                queue.remove_listener(listener)
                code = 3
            except QueueClosed:
                code = 0
            except BaseException:
                code = 4
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        queue.shutdown()
        sys.exit(os.waitstatus_to_exitcode(status))
    """)
    assert result.returncode == 0, (result.returncode, result.stderr)


# -- regression: exactly one end per task, whatever races it -----------------------------


class Ledger:
    """Counts, per handle, the terminal events and done callbacks it got."""

    TERMINAL = (EventKind.SUCCEEDED, EventKind.FAILED, EventKind.CANCELLED)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ends: dict = {}
        self.callbacks: dict = {}
        self.retrying: List[TaskHandle] = []

    def listen(self, event: Any) -> None:
        with self._lock:
            if event.kind in self.TERMINAL:
                self.ends[event.handle] = self.ends.get(event.handle, 0) + 1
            elif event.kind is EventKind.RETRYING:
                self.retrying.append(event.handle)

    def called_back(self, handle: Any) -> None:
        with self._lock:
            self.callbacks[handle] = self.callbacks.get(handle, 0) + 1

    def assert_once_each(self, handles: List[TaskHandle]) -> None:
        with self._lock:
            assert all(self.ends.get(h) == 1 for h in handles), \
                [(h, self.ends.get(h)) for h in handles if self.ends.get(h) != 1][:5]
            assert all(self.callbacks.get(h) == 1 for h in handles), \
                [(h, self.callbacks.get(h)) for h in handles if self.callbacks.get(h) != 1][:5]


def shut(queue: TaskQueue, mode: str) -> None:
    """Shut ``queue`` down in one of the ways a caller can."""
    if mode == "cancel":
        queue.shutdown(cancel_futures=True)
    elif mode == "timeout":
        queue.shutdown(timeout=0)
    elif mode == "nowait":
        queue.shutdown(wait=False, cancel_futures=True)
    elif mode == "drain":
        queue.shutdown()
    elif mode == "stampede":  # every mode at once, from four threads
        start = threading.Barrier(4)
        kinds = [{"cancel_futures": True}, {"timeout": 0}, {"wait": False}, {}]

        def call(kwargs: dict) -> None:
            start.wait(WAIT)
            queue.shutdown(**kwargs)

        threads = [threading.Thread(target=call, args=(k,)) for k in kinds]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert not any(t.is_alive() for t in threads)
    else:
        raise AssertionError(mode)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["cancel", "timeout", "nowait", "drain", "stampede"])
def test_shutdown_racing_retries_producers_and_cancels_ends_each_task_once(
        mode: str, shaken: None, quiet_logs: None) -> None:
    # Retries re-enter the queue at once or from the scheduler a moment later,
    # producers block on a small queue, a canceller cancels tasks that are queued
    # or waiting for their retry, and shutdown seals all of it mid-flight.
    for round_ in range(10):
        queue = TaskQueue(workers=3, maxsize=4, retries=3, backoff=Backoff.constant(0.0003))
        ledger = Ledger()
        queue.add_listener(ledger.listen)
        handles: List[TaskHandle] = []
        lock = threading.Lock()
        enough = threading.Event()

        def body(n: int) -> int:
            if n % 4 == 1:
                raise Retry(delay=0)        # straight back into the queue
            if n % 4 == 2:
                raise ConnectionError(n)     # through the scheduler
            if n % 4 == 3:
                raise ValueError(n)          # not retryable: a dead letter
            return n

        def produce(first: int) -> None:
            for n in range(first, first + 400, 1):
                try:
                    handle = queue.submit(body, n)
                except QueueClosed:
                    return
                handle.add_done_callback(ledger.called_back)
                with lock:
                    handles.append(handle)
                    if len(handles) >= 60:
                        enough.set()

        def cancel_some() -> None:
            while not enough.is_set() or not queue.join(0):
                with lock:
                    picked = handles[-3:] + ledger.retrying[-2:]
                for handle in picked:
                    handle.cancel()
                if queue.join(0) and enough.is_set():
                    return

        producers = [threading.Thread(target=produce, args=(i * 1000,)) for i in range(2)]
        canceller = threading.Thread(target=cancel_some, daemon=True)
        for t in producers + [canceller]:
            t.start()
        assert enough.wait(WAIT)
        shut(queue, mode)
        for t in producers:
            t.join(WAIT)
        settle(handles)
        queue.shutdown()
        canceller.join(WAIT)
        assert not canceller.is_alive()
        assert_settled(queue, handles)
        ledger.assert_once_each(handles)
        assert len(queue.dead_letters()) == queue.stats().failed, f"round {round_}"


@pytest.mark.timeout(60)
def test_waiters_see_each_handle_end_once_while_it_retries_and_is_cancelled(
        shaken: None, quiet_logs: None) -> None:
    # cf.wait, as_completed and result(timeout) wait on handles that go back
    # from RUNNING to PENDING between attempts and may be cancelled there.
    for _ in range(5):
        queue = TaskQueue(workers=3, retries=2, backoff=Backoff.constant(0.0002))
        ledger = Ledger()
        queue.add_listener(ledger.listen)
        tries: dict = {}
        tries_lock = threading.Lock()

        def body(n: int) -> int:
            with tries_lock:
                tries[n] = tries.get(n, 0) + 1
                attempt = tries[n]
            if n % 5 == 0:
                raise KeyError(n)  # fails for good: not retryable
            if attempt < 3:
                raise ConnectionError(n)
            return n

        handles = [queue.submit(body, n) for n in range(120)]
        stop = threading.Event()

        def cancel_retrying() -> None:
            while not stop.is_set():
                for handle in list(ledger.retrying[-3:]):
                    handle.cancel()

        results: List[Any] = []

        def wait_for_one(handle: TaskHandle) -> None:
            try:
                results.append(handle.result(WAIT))
            except BaseException as exc:  # CancelledError, KeyError
                results.append(type(exc))

        canceller = threading.Thread(target=cancel_retrying)
        canceller.start()
        waiters = [threading.Thread(target=wait_for_one, args=(h,)) for h in handles[::10]]
        for t in waiters:
            t.start()
        first_error = cf.wait(handles, timeout=WAIT, return_when=cf.FIRST_EXCEPTION)
        assert first_error.done, "FIRST_EXCEPTION returned with nothing done"
        seen = list(cf.as_completed(handles, timeout=WAIT))
        stop.set()
        canceller.join(WAIT)
        for t in waiters:
            t.join(WAIT)
        assert not any(t.is_alive() for t in waiters + [canceller])
        assert len(seen) == len(set(seen)) == len(handles)
        assert len(results) == len(waiters)
        done, not_done = cf.wait(handles, timeout=0)
        assert not not_done
        queue.shutdown()
        assert_settled(queue, handles)
        for handle in handles:
            handle.add_done_callback(ledger.called_back)  # runs at once, once
        ledger.assert_once_each(handles)


# -- regression: user code may call back into the queue and the handle ---------------------


@pytest.mark.timeout(60)
def test_callbacks_and_listeners_may_call_back_into_the_queue(quiet_logs: None) -> None:
    # Given a one-slot queue whose callbacks and listeners all call back into it
    queue = TaskQueue(workers=2, maxsize=1, retries=1, backoff=Backoff.none())
    follow_ups: List[TaskHandle] = []
    problems: List[str] = []
    cancels: dict = {}
    lock = threading.Lock()
    once = threading.Event()

    def on_done(handle: Any) -> None:
        # Runs in the worker that ended the task (or the canceller): none may hang.
        try:
            if not handle.cancelled():
                handle.exception(0)
            queue.stats()
            nested: List[Any] = []
            handle.add_done_callback(nested.append)  # ended already: runs at once
            if nested != [handle]:
                problems.append("a nested callback did not run at once")
            if not handle.cancelled() and handle.result() == 0:
                follow_up = queue.submit(abs, -7)  # from a worker: past the full queue
                with lock:
                    follow_ups.append(follow_up)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            problems.append(repr(exc))

    def listener(event: Any) -> None:
        try:
            if event.kind is EventKind.SUBMITTED and event.handle.name == "cancel-me":
                with lock:
                    cancels[event.handle] = event.handle.cancel()
            if event.kind is EventKind.STARTED and event.handle.cancel():
                problems.append("a running task was cancelled")
            if event.kind in (EventKind.SUCCEEDED, EventKind.RETRYING, EventKind.CANCELLED):
                queue.stats()
        except Exception as exc:  # noqa: BLE001 - a listener's errors are only logged
            problems.append(repr(exc))

    queue.add_listener(listener)

    def body(n: int) -> int:
        if n == 3 and not once.is_set():
            once.set()
            raise ConnectionError("once")
        return n

    handles = []
    for n in range(30):
        handle = queue.submit(Task(body, (n,), name="cancel-me" if n % 7 == 6 else None))
        handle.add_done_callback(on_done)
        handles.append(handle)
    # When a task shuts the queue down from a worker
    closer = queue.submit(queue.shutdown)
    assert closer.result(WAIT) is None
    settle(handles)
    queue.shutdown()
    with lock:
        every = handles + [closer] + follow_ups
    settle(every)
    # Then nothing hung or failed, and the counters agree with the handles
    assert not problems, problems
    assert len(follow_ups) == 1
    assert len(cancels) == 4
    assert all(h.cancelled() == cancelled for h, cancelled in cancels.items())
    assert_settled(queue, every)


@pytest.mark.timeout(60)
def test_shutdown_with_cancel_from_a_retrying_listener_ends_the_retry_and_the_queue(
        quiet_logs: None) -> None:
    # Given two busy workers, tasks queued behind them, and a listener that shuts
    # the queue down (cancelling) from the worker where the first retry is decided
    queue = TaskQueue(workers=2, retries=5, backoff=Backoff.constant(30), name="selfstop")
    shut_down = threading.Event()

    def stop_on_first_retry(event: Any) -> None:
        if event.kind is EventKind.RETRYING and not shut_down.is_set():
            shut_down.set()
            queue.shutdown(cancel_futures=True)  # from a worker: does not wait

    queue.add_listener(stop_on_first_retry)
    blocks, fails = Gate(), Gate()
    blocker = queue.submit(blocks.wait)
    failing = queue.submit(lambda: fails.wait() and 1 / 0)
    blocks.wait_for_arrivals(1)
    fails.wait_for_arrivals(1)
    queued = [queue.submit(abs, -i) for i in range(5)]
    try:
        # When the failing attempt ends and its retry is decided
        fails.open()
        # Then the retry is refused and cancelled, and so is everything queued
        with pytest.raises(cf.CancelledError):
            failing.result(WAIT)
        assert all(h.cancelled() for h in queued)
        assert not blocker.done()
    finally:
        blocks.open()
    assert blocker.result(WAIT) == "through"
    queue.shutdown()
    assert_settled(queue, [blocker, failing] + queued)
    for thread in threading.enumerate():
        if thread.name.startswith("selfstop-"):
            thread.join(WAIT)
            assert not thread.is_alive(), thread.name


# -- regression: a worker that dies while the pool winds down ------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode, kwargs", [
    ("drain", {}), ("cancel", {"cancel_futures": True}), ("timeout", {"timeout": 0}),
    ("nowait", {"wait": False})])
def test_a_worker_dying_during_shutdown_loses_nothing_and_every_thread_ends(
        mode: str, kwargs: dict, quiet_logs: None) -> None:
    # Given one worker busy with a task whose acknowledgement will fail, and more queued
    queue = first_ack_crashes(workers=1, retries=1, name=f"dying-{mode}")
    gate = Gate()
    running = queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    queued = [queue.submit(abs, -i) for i in range(3)]
    # When shutdown starts in some mode, and then the worker dies acknowledging
    stopper = threading.Thread(target=queue.shutdown, kwargs=kwargs)
    stopper.start()
    if mode in ("cancel", "timeout"):
        settle(queued)  # cancelled before the worker dies
    gate.open()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    settle([running] + queued)
    queue.shutdown()
    # Then the task ran again (drain) or was cancelled (sealed), once, and all threads end
    if mode in ("drain", "nowait"):
        assert running.result(0) == "through" and running.attempts == 2
    assert_settled(queue, [running] + queued)
    for thread in threading.enumerate():
        if thread.name.startswith(f"dying-{mode}-"):
            thread.join(WAIT)
            assert not thread.is_alive(), thread.name


# -- regression: interpreter exit ----------------------------------------------------


@pytest.mark.timeout(90)
def test_exit_drains_after_a_task_shut_its_own_queue_down_without_waiting(tmp_path: Path) -> None:
    out = tmp_path / "done.txt"
    result = run_script(f"""
        import threading
        from taskqueue import Backoff, TaskQueue
        queue = TaskQueue(workers=2, retries=2, backoff=Backoff.constant(0.01))
        lock, tried = threading.Lock(), set()
        def write(i):
            with lock:
                if i % 7 == 0 and i not in tried:
                    tried.add(i)
                    raise ConnectionError(i)  # finishes only through a retry
                with open({str(out)!r}, "a") as f:
                    f.write(f"{{i}}\\n")
        for i in range(100):
            queue.submit(write, i)
        queue.submit(queue.shutdown, wait=False)  # from a worker, mid-stream
        # no shutdown() here: the interpreter exits, and must still drain
    """)
    assert result.returncode == 0, result.stderr
    assert sorted(int(x) for x in out.read_text().split()) == list(range(100))
