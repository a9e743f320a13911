"""Bridges from worker threads to asyncio event loops.

Kept apart, and imported only by callers that use asyncio, because
importing asyncio is slow and most users of taskqueue never do.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Optional

__all__ = ["done_waiter", "submit_when_room"]


def _set_pending(future: asyncio.Future) -> None:  # type: ignore[type-arg]
    if not future.done():
        future.set_result(None)


def _wake(loop: asyncio.AbstractEventLoop, future: asyncio.Future) -> None:  # type: ignore[type-arg]
    # Called from any thread; must never raise into it.
    try:
        loop.call_soon_threadsafe(_set_pending, future)
    except RuntimeError:  # that loop has closed: nobody waits any more
        pass


def done_waiter(handle: Any) -> asyncio.Future:  # type: ignore[type-arg]
    """Return a future of the running loop that completes (with None) when ``handle`` ends.

    Not ``asyncio.wrap_future``: that one cancels the handle when the awaiting
    coroutine is cancelled, and a caller going away must not cancel
    background work.
    """
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    handle.add_done_callback(lambda _: _wake(loop, waiter))
    return waiter


async def submit_when_room(
    try_submit: Callable[[], Any],
    when_room: Callable[[Callable[[], None]], None],
    full: type,
    timeout: Optional[float],
    *,
    in_thread: bool = False,
) -> Any:
    """Call ``try_submit()`` until it stops raising ``full``, waiting for room in between.

    Args:
        try_submit: submits without waiting for room; raises ``full`` when there is none.
        when_room: ``when_room(callback)`` calls ``callback()`` once there is room.
        full: the exception ``try_submit`` raises when full.
        timeout: the most seconds to wait for room; None for ever.
        in_thread: ``try_submit`` does blocking I/O (a journal commit): call
            it in the loop's default executor, never on the loop's thread.
            If the awaiting coroutine is cancelled meanwhile, the task it
            submits is cancelled as soon as it is accepted.

    Raises:
        full: still no room after ``timeout``.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        try:
            if in_thread:
                return await _in_thread(loop, try_submit)
            return try_submit()
        except full:
            if deadline is not None and loop.time() >= deadline:
                raise
        room = loop.create_future()
        when_room(lambda: _wake(loop, room))
        remaining = None if deadline is None else max(0.0, deadline - loop.time())
        try:
            await asyncio.wait_for(room, remaining)
        except asyncio.TimeoutError:
            pass  # one last try, which raises if there is still no room


async def _in_thread(loop: asyncio.AbstractEventLoop, try_submit: Callable[[], Any]) -> Any:
    future = loop.run_in_executor(None, try_submit)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        # The submit goes on in its thread and cannot be taken back: the
        # caller gave up, so the task is cancelled once it is accepted.
        future.add_done_callback(_cancel_accepted)
        raise


def _cancel_accepted(future: "asyncio.Future[Any]") -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().cancel()
