"""asyncio: asubmit waits for room without blocking the loop; ``await handle`` gives the result.

Responsiveness is checked as an outcome about blocking, not speed: a ticker
coroutine runs beside the producer, and the tests assert that it kept
ticking while ``asubmit`` waited and that no single gap between its ticks
was long (a loop blocked in a submit would show one long gap, or never let
the ticker open the gate the producer is waiting behind).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import time
from typing import Any, Awaitable, Callable, List, Optional

import pytest

from conftest import WAIT, Gate
from taskqueue import QueueClosed, QueueFull, Task, TaskHandle, TaskQueue, TaskState

pytestmark = pytest.mark.timeout(30)

# A loop iteration longer than this means something blocked the loop.
MAX_GAP = 1.0


class Ticker:
    """A coroutine that ticks every millisecond and records when."""

    def __init__(self) -> None:
        self.times: List[float] = []
        self._stop: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self.on_tick: Callable[[int], None] = lambda n: None

    def start(self) -> None:
        self._stop = asyncio.Event()  # made inside the running loop (3.9)
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            self.times.append(time.monotonic())
            self.on_tick(len(self.times))
            await asyncio.sleep(0.001)

    async def stop(self) -> None:
        assert self._stop is not None and self._task is not None
        self._stop.set()
        await self._task

    def ticks_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.times if start <= t <= end)

    @property
    def max_gap(self) -> float:
        return max((b - a for a, b in zip(self.times, self.times[1:])), default=0.0)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, WAIT))  # type: ignore[arg-type]


def double_slowly(i: int) -> int:
    # A little real work per task, so that the workers, not the producer, are
    # the bottleneck and the small queue really fills up.
    sum(range(300))
    return 2 * i


# -- the big one ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_ten_thousand_tasks_from_asyncio_keep_the_loop_responsive(
        make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=2, maxsize=16)
    count = 10_000

    async def main() -> Any:
        ticker = Ticker()
        ticker.start()
        await asyncio.sleep(0)
        began = time.monotonic()
        handles = [await queue.asubmit(double_slowly, i) for i in range(count)]
        submitted = time.monotonic()
        results = [await handle for handle in handles]
        await ticker.stop()
        return handles, results, ticker, began, submitted

    handles, results, ticker, began, submitted = run(main())
    # Then every result is right
    assert results == [2 * i for i in range(count)]
    assert all(isinstance(h, TaskHandle) and h.state is TaskState.SUCCEEDED for h in handles)
    stats = queue.stats()
    assert stats.submitted == stats.succeeded == count
    # and the ticker kept running while the producer waited for room, with no
    # loop iteration blocked for long
    assert ticker.ticks_between(began, submitted) > 0
    assert ticker.max_gap < MAX_GAP


def test_asubmit_waits_for_room_without_blocking_the_loop(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    # Given a full one-slot queue whose only worker is held at a gate; the
    # timeout turns a loop blocked inside submit into a failure, not a hang
    queue = make_queue(workers=1, maxsize=1, submit_timeout=5)
    queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    queue.submit(abs, -1)

    async def main() -> Any:
        # When the ticker alone opens the gate after 50 ticks, while the
        # producer is waiting in asubmit
        ticker = Ticker()
        ticker.on_tick = lambda n: gate.open() if n == 50 else None
        ticker.start()
        began = time.monotonic()
        handle = await queue.asubmit(pow, 2, 8)
        returned = time.monotonic()
        result = await handle
        await ticker.stop()
        return result, ticker, began, returned

    # Then asubmit returned only after the ticker had ticked 50 times
    result, ticker, began, returned = run(main())
    assert result == 256
    assert ticker.ticks_between(began, returned) >= 49
    assert ticker.max_gap < MAX_GAP


# -- awaiting a handle ---------------------------------------------------------------------


def test_await_handle_gives_the_result(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=2)

    async def main() -> Any:
        handle = await queue.asubmit(pow, 2, 5)
        direct = await queue.submit(sorted, [3, 1, 2])  # a plain submit's handle is awaitable too
        return handle, await handle, direct

    handle, result, direct = run(main())
    assert result == 32 and handle.result(0) == 32 and direct == [1, 2, 3]


def test_await_handle_raises_the_tasks_exception(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1, retries=0)

    class Boom(Exception):
        pass

    def boom() -> None:
        raise Boom("bang")

    async def main() -> Any:
        handle = await queue.asubmit(boom)
        with pytest.raises(Boom, match="bang"):
            await handle
        return handle

    handle = run(main())
    assert handle.state is TaskState.FAILED


def test_await_a_cancelled_handle_raises_cancelled(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1)
    queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    handle = queue.submit(abs, -1)
    assert handle.cancel()

    async def main() -> None:
        with pytest.raises(cf.CancelledError):
            await handle

    run(main())


def test_await_handle_of_a_task_that_has_already_ended(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1)
    handle = queue.submit(abs, -7)
    assert handle.result(WAIT) == 7

    async def main() -> Any:
        return await handle

    assert run(main()) == 7


def test_cancelling_a_coroutine_awaiting_a_running_handle_does_not_cancel_the_task(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1)

    async def main() -> Any:
        handle = await queue.asubmit(gate.wait)

        async def waiter() -> Any:
            return await handle

        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0)  # the waiter is now suspended on the handle
        await asyncio.get_running_loop().run_in_executor(None, gate.wait_for_arrivals, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not handle.cancelled()
        gate.open()
        return handle, await handle

    handle, result = run(main())
    assert result == "through" and handle.state is TaskState.SUCCEEDED


def test_cancelling_a_coroutine_awaiting_a_pending_handle_does_not_cancel_the_task(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    # A pending task is the one a stock wrap_future would cancel
    queue = make_queue(workers=1)
    queue.submit(gate.wait)
    gate.wait_for_arrivals(1)

    async def main() -> Any:
        handle = await queue.asubmit(pow, 3, 3)
        assert handle.state is TaskState.PENDING

        async def waiter() -> Any:
            return await handle

        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert handle.state is TaskState.PENDING and not handle.cancelled()
        gate.open()
        return handle, await handle

    handle, result = run(main())
    assert result == 27 and handle.state is TaskState.SUCCEEDED


def test_a_wait_for_timeout_on_a_handle_does_not_cancel_the_task(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1)
    queue.submit(gate.wait)
    gate.wait_for_arrivals(1)

    async def main() -> Any:
        handle = await queue.asubmit(pow, 2, 3)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(handle, 0.05)
        assert not handle.cancelled()
        gate.open()
        return handle, await handle

    handle, result = run(main())
    assert result == 8 and handle.state is TaskState.SUCCEEDED


# -- cancelling asubmit itself ---------------------------------------------------------------------


def test_cancelling_asubmit_while_it_waits_for_room_submits_nothing(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    # Given a full one-slot queue and a held worker
    queue = make_queue(workers=1, maxsize=1)
    queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    queue.submit(abs, -1)
    ran: List[str] = []

    async def main() -> None:
        before = queue.stats().submitted
        # When a coroutine waiting in asubmit for room is cancelled
        task = asyncio.ensure_future(queue.asubmit(ran.append, "should not run"))
        await asyncio.sleep(0)  # it is now suspended, waiting for room
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Then nothing was submitted, even once room appears
        assert queue.stats().submitted == before
        gate.open()
        await asyncio.get_running_loop().run_in_executor(None, queue.join, WAIT)
        assert queue.stats().submitted == before

    run(main())
    assert not ran
    assert queue.stats().pending == 0 and queue.stats().cancelled == 0


def test_cancelling_one_waiting_asubmit_does_not_stop_another(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1, maxsize=1)
    queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    queue.submit(abs, -1)

    async def main() -> Any:
        doomed = asyncio.ensure_future(queue.asubmit(abs, -2))
        kept = asyncio.ensure_future(queue.asubmit(abs, -3))
        await asyncio.sleep(0)
        doomed.cancel()
        gate.open()
        handle = await kept
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return await handle

    assert run(main()) == 3
    assert queue.join(WAIT)
    assert queue.stats().submitted == 3


# -- any loop, any thread ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_asubmit_works_from_two_loops_in_two_threads(make_queue: Callable[..., TaskQueue]) -> None:
    # Given one small queue shared by two event loops in two threads
    queue = make_queue(workers=2, maxsize=4)
    barrier = threading.Barrier(2)
    results: dict = {}
    errors: List[BaseException] = []

    def loop_thread(name: str, offset: int) -> None:
        async def main() -> List[int]:
            ticker = Ticker()
            ticker.start()
            handles = [await queue.asubmit(double_slowly, offset + i) for i in range(1000)]
            out = [await h for h in handles]
            await ticker.stop()
            assert ticker.max_gap < MAX_GAP
            return out

        try:
            barrier.wait(WAIT)
            results[name] = asyncio.run(main())
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=loop_thread, args=(n, o))
               for n, o in (("a", 0), ("b", 10_000))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    assert not errors
    assert results["a"] == [2 * i for i in range(1000)]
    assert results["b"] == [2 * (10_000 + i) for i in range(1000)]
    assert queue.stats().submitted == 2000


# -- timeouts, closing, bad input ------------------------------------------------------------------


def test_asubmit_honours_submit_timeout_without_blocking_the_loop(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1, maxsize=1, submit_timeout=0.3)
    queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    queue.submit(abs, -1)

    async def main() -> Any:
        ticker = Ticker()
        ticker.start()
        began = time.monotonic()
        with pytest.raises(QueueFull):
            await queue.asubmit(abs, -2)
        ended = time.monotonic()
        await ticker.stop()
        return ticker, began, ended

    ticker, began, ended = run(main())
    assert ended - began >= 0.3  # it did wait out the timeout, not give up at once
    assert ticker.ticks_between(began, ended) > 0 and ticker.max_gap < MAX_GAP
    assert queue.stats().submitted == 2


def test_asubmit_with_zero_submit_timeout_fails_at_once_when_full(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1, maxsize=1, submit_timeout=0)
    queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    queue.submit(abs, -1)

    async def main() -> None:
        with pytest.raises(QueueFull):
            await queue.asubmit(abs, -2)

    run(main())
    assert queue.stats().submitted == 2


def test_asubmit_to_a_shut_down_queue_raises_queue_closed() -> None:
    queue = TaskQueue(workers=1)
    queue.shutdown()

    async def main() -> None:
        with pytest.raises(QueueClosed):
            await queue.asubmit(abs, -1)

    run(main())


def test_a_queue_shut_down_while_asubmit_waits_raises_queue_closed(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1, maxsize=1)
    queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    queue.submit(abs, -1)

    async def main() -> None:
        task = asyncio.ensure_future(queue.asubmit(abs, -2))
        await asyncio.sleep(0)
        assert not task.done()
        closer = threading.Thread(target=queue.shutdown, kwargs={"wait": False})
        closer.start()
        with pytest.raises(QueueClosed):
            await task
        closer.join(WAIT)

    run(main())
    gate.open()


def test_asubmit_accepts_a_task_and_refuses_bad_input(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1)

    async def main() -> Any:
        handle = await queue.asubmit(Task(pow, (2, 4), priority=3, name="power"))
        with pytest.raises(TypeError):
            await queue.asubmit(42)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await queue.asubmit(Task(abs), -1)
        return handle.name, await handle

    assert run(main()) == ("power", 16)
    assert queue.stats().submitted == 1
