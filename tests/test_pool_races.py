"""Races in the pool's concurrency paths: shutdown, retries, cancels, crashes, fork.

A second reader's tests. Each one forces an interleaving with events and
gates (never a sleep), or shakes one loose by running a racy scenario many
times under ``sys.setswitchinterval(1e-6)``; every wait is bounded, so that
a hang fails the test instead of hanging the run.

Tests marked ``xfail(strict=True, reason="BUG: ...")`` show a real bug: they
pass once the bug is fixed, and then the marker must go.
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
from typing import Any, Iterator, List, Optional

import pytest

from conftest import WAIT, Gate
from taskqueue import (
    Backoff,
    EventKind,
    QueueClosed,
    QueueFull,
    Retry,
    TaskHandle,
    TaskQueue,
    TaskState,
)
from taskqueue.stats import WorkerTally, snapshot

ROOT = Path(__file__).resolve().parent.parent

# A hang detector for a wait that a correct queue ends within milliseconds;
# used only where the bug makes the wait endless (an xfail would otherwise
# cost the full WAIT).
HANG = 3.0


@pytest.fixture
def shaken() -> Iterator[None]:
    """Switch threads as often as the interpreter can, to shake interleavings loose."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


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


def assert_settled(queue: TaskQueue, handles: List[TaskHandle]) -> None:
    """Every handle is terminal, the counters agree with them, and join() is free."""
    assert all(h.done() for h in handles), [h for h in handles if not h.done()][:5]
    states = [h.state for h in handles]
    stats = queue.stats()
    assert stats.submitted == len(handles)
    assert stats.succeeded == states.count(TaskState.SUCCEEDED)
    assert stats.failed == states.count(TaskState.FAILED)
    assert stats.cancelled == states.count(TaskState.CANCELLED)
    assert (stats.pending, stats.running) == (0, 0)
    assert queue.join(0)


def settle(handles: List[TaskHandle]) -> None:
    """Wait (bounded) until every handle is terminal."""
    done, not_done = cf.wait(handles, timeout=WAIT)
    assert not not_done, f"{len(not_done)} handles never ended"


class FirstAckCrashes(TaskQueue):
    """A queue whose first acknowledgement of a success fails (the documented fault seam)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fault_lock = threading.Lock()
        self.faulted = False

    def _settle_success(self, handle: TaskHandle, result: Any, tally: WorkerTally) -> None:
        with self._fault_lock:
            first, self.faulted = not self.faulted, True
        if first:
            raise RuntimeError("injected fault between the task and its acknowledgement")
        super()._settle_success(handle, result, tally)


# -- a replacement worker is not yet known as a worker --------------------------------


@pytest.mark.xfail(strict=True, reason=(
    "BUG: pool._start_worker adds the new thread's ident to _worker_ids only after "
    "thread.start() returned; a replacement worker runs queued tasks before that, so its "
    "submit() is bounded (can deadlock on its own full queue) and its join() is not refused"))
@pytest.mark.timeout(60)
def test_a_replacement_worker_is_a_worker_from_its_first_task(quiet_logs: None) -> None:
    seen = []
    for _ in range(5):
        # Given a one-slot, one-worker queue whose first acknowledgement fails
        queue = FirstAckCrashes(workers=1, maxsize=1)
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


@pytest.mark.xfail(strict=True, reason=(
    "BUG: stats.snapshot sums `running` tally by tally; a task that retries on another "
    "worker between two of those reads is counted running twice, so pending < 0"))
@pytest.mark.timeout(10)
def test_a_retry_moving_between_workers_mid_snapshot_never_makes_pending_negative() -> None:
    # Given one task, running on worker 0, and an idle worker 1
    worker1 = WorkerTally()
    worker0 = HandsOverOnRead(then_running=worker1)
    worker0.running = 1
    # When a snapshot reads worker 0's tally, and the task moves to worker 1 before
    # the snapshot reads worker 1's
    stats = snapshot([worker0, worker1], read_submitted=lambda: 1, cancelled=0, workers=2,
                     dead_letters=0, dead_letters_dropped=0, now=1.0)
    # Then the one task is counted once
    assert stats.running <= 1
    assert stats.pending >= 0


# -- done callbacks that raise BaseException -------------------------------------------


def exit_if_cancelled(handle: Any) -> None:
    """A done callback that ends its thread when its task was cancelled."""
    if handle.cancelled():
        raise SystemExit("a done callback called sys.exit()")


@pytest.mark.xfail(strict=True, reason=(
    "BUG: TaskHandle._run_callbacks lets BaseException through; when a worker cancels a "
    "retry that shutdown refused (pool._settle_failure), the cancel has already marked the "
    "task done, and _worker_crashed marks it done again: join() returns while a task runs"))
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


@pytest.mark.xfail(strict=True, reason=(
    "BUG: pool._cancel_not_started stops at the first cancel() whose done callback raises "
    "BaseException; the rest were already taken out of the sealed queue and are never "
    "ended, so join() and the interpreter-exit drain wait for ever"))
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


@pytest.mark.xfail(strict=True, reason=(
    "BUG: a done callback that calls shutdown() while shutdown(cancel_futures=True) is "
    "cancelling (pool._cancel_not_started) waits for the tasks its caller has yet to "
    "cancel: both wait for ever"))
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


@pytest.mark.xfail(strict=True, reason=(
    "BUG: pool._settle_failure calls repr(exc) for its WARNING log outside any try; an "
    "exception whose repr() raises kills the worker, which is replaced, the retry is "
    "counted twice and no RETRYING event is sent"))
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


@pytest.mark.xfail(strict=True, reason=(
    "BUG: pool._worker_ids keeps the idents of workers that exited after shutdown; the OS "
    "reuses them, so join() from an unrelated new thread is refused as if from a worker "
    "(and shutdown() from it would not wait)"))
@pytest.mark.timeout(30)
def test_join_after_shutdown_from_a_new_thread_is_not_mistaken_for_a_worker() -> None:
    outcomes: List[Any] = []
    reused = 0
    for _ in range(5):
        queue = TaskQueue(workers=2)
        queue.submit(abs, -1).result(WAIT)
        workers = {t.ident for t in threading.enumerate() if t.name.startswith("taskqueue-worker-")}
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


@pytest.mark.xfail(strict=True, reason=(
    "BUG: shutdown(wait=False, timeout=t) (and any shutdown called from a worker) ignores "
    "timeout: pool._wind_down_in_background drains without a deadline and never cancels"))
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


@pytest.mark.xfail(strict=True, reason=(
    "BUG: TaskQueue.remove_listener does not call _refuse_if_forked: in a forked child it "
    "takes the parent's listener lock (which the fork may have copied held) instead of "
    "raising QueueClosed as every other call does"))
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
