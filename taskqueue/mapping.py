"""A lazy, bounded ``map``: results in input order, a fixed number in flight.

``Executor.map`` submits every item before it returns, so mapping over a
generator of ten million items builds ten million futures. :func:`lazy_map`
keeps at most ``buffersize`` submitted tasks whose results the caller has not
yet been given, and pulls the next input item only when a result is handed
out. It knows nothing of the queue: it is given the queue's ``submit``.
"""

from __future__ import annotations

import collections
import logging
from itertools import islice
from concurrent.futures import CancelledError, Future, TimeoutError
from time import monotonic
from typing import Any, Callable, Deque, Iterable, Iterator, Optional, Tuple

from . import validate

__all__ = ["lazy_map"]

log = logging.getLogger(__name__)

Submit = Callable[..., "Future[Any]"]


def lazy_map(
    submit: Submit,
    fn: Callable[..., Any],
    iterables: Iterable[Iterable[Any]],
    /,
    *,
    timeout: Optional[float] = None,
    buffersize: int,
    clock: Callable[[], float] = monotonic,
) -> Iterator[Any]:
    """Return an iterator over ``fn(*args)`` for the zipped ``iterables``, in order.

    The first ``buffersize`` items are submitted before this returns, so the
    work starts at once, as with ``Executor.map``. After that, each result
    handed out lets one more item be pulled from the input and submitted:
    after ``k`` results, at most ``k + buffersize`` items have been pulled.
    Like ``map``, the iterables are zipped and the shortest one ends it.

    An iterator that is dropped before its first result was asked for
    cancels nothing: the first ``buffersize`` items run, as
    ``Executor.map``'s would (so ``queue.map(fn, items)`` for its side
    effects works on inputs of up to ``buffersize`` items; the rest of a
    longer input is never pulled). Once iteration has begun, closing the
    iterator, dropping it, or an exception leaving it cancels every task it
    submitted whose result was not handed out (a task already running
    finishes, as ``Future.cancel`` allows). It never holds a result it has
    handed out.

    Args:
        submit: ``submit(fn, *args)`` returns a Future for one call (the
            queue's own ``submit``).
        fn: the callable to apply.
        iterables: the argument sources, zipped (a tuple of iterables).
        timeout: seconds, counted from this call, within which every result
            must be ready; None waits for ever.
        buffersize: the most tasks in flight at once (>= 1).
        clock: the monotonic clock the deadline is measured on; the waits
            for results themselves take real seconds.

    Returns:
        An iterator of the results. Iterate it from one thread at a time.

    Raises:
        TypeError: ``buffersize`` is not an int, ``timeout`` not a number,
            ``fn`` or ``clock`` not callable, or an argument source not iterable.
        ValueError: ``buffersize`` is below 1, ``timeout`` negative or not finite.
        Whatever ``submit`` or the input raises while the first items are
        submitted (those already submitted are cancelled first).

    The iterator raises ``concurrent.futures.TimeoutError`` when a result is
    not ready by the deadline, and a task's own exception when its result is
    reached; earlier results are handed out first.
    """
    validate.whole_number("buffersize", buffersize, minimum=1)
    timeout = validate.optional_seconds("timeout", timeout)
    if not callable(clock):
        raise TypeError(f"clock must be callable, got {clock!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    deadline = None if timeout is None else clock() + timeout
    items = zip(*iterables)
    in_flight: Deque[Future[Any]] = collections.deque()
    try:
        for args in islice(items, buffersize):
            in_flight.append(submit(fn, *args))
    except BaseException:
        for handle in in_flight:
            handle.cancel()
        raise
    return _MapIterator(submit, fn, items, in_flight, deadline, clock,
                        full_batch=len(in_flight) == buffersize)


class _MapIterator:
    """The iterator :func:`lazy_map` returns: one result per ``next()``, in order.

    Dropped before its first ``next()``, it cancels nothing: the batch
    submitted when it was made runs, as ``Executor.map``'s would (CPython
    #11777); it logs a warning if the input may hold items never pulled.
    Once iteration has begun, closing or dropping it, or an exception
    leaving ``next()``, cancels what it submitted and has not handed out.
    """

    def __init__(self, submit: Submit, fn: Callable[..., Any], items: Iterator[Tuple[Any, ...]],
                 in_flight: Deque[Future[Any]], deadline: Optional[float],
                 clock: Callable[[], float], *, full_batch: bool) -> None:
        self._submit = submit
        self._fn = fn
        self._items = items
        self._in_flight = in_flight
        self._deadline = deadline
        self._clock = clock
        self._full_batch = full_batch
        self._started = False

    def __iter__(self) -> _MapIterator:
        return self

    def __next__(self) -> Any:
        self._started = True
        in_flight = self._in_flight
        if not in_flight:
            raise StopIteration
        try:
            if _succeeded(in_flight[0], self._deadline, self._clock):
                # Refill before handing the result out, so that the pool keeps
                # working while the caller deals with it; the head is done, so
                # no more than buffersize are ever in flight. (A failed head
                # raises next, ending the iterator: nothing more is pulled.)
                for args in islice(self._items, 1):
                    in_flight.append(self._submit(self._fn, *args))
            # Returned straight from the call, never kept: the iterator must
            # not keep alive a result the caller has dropped (CPython #14406).
            return _result_or_cancel(in_flight.popleft(), self._deadline, self._clock)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Cancel every task submitted and not handed out (running ones finish)."""
        self._started = True
        in_flight, self._in_flight = self._in_flight, collections.deque()
        for handle in in_flight:
            handle.cancel()

    def __del__(self) -> None:
        try:
            if self._started:
                self.close()
            elif self._full_batch:
                log.warning("a map() result was dropped unread: its first %d items run, but "
                            "the rest of its input was never submitted; iterate the result, "
                            "or pass a larger buffersize", len(self._in_flight))
        except Exception:  # pragma: no cover - at interpreter exit, nothing is left to tell
            pass


def _succeeded(handle: Future[Any], deadline: Optional[float],
               clock: Callable[[], float]) -> bool:
    # Wait until the head is done without taking its result; a head given up
    # on (timed out) is cancelled, as concurrent.futures does.
    try:
        return handle.exception(None if deadline is None else max(0.0, deadline - clock())) is None
    except CancelledError:
        return False  # _result_or_cancel raises it
    except TimeoutError:
        handle.cancel()
        raise


def _result_or_cancel(handle: Future[Any], deadline: Optional[float],
                      clock: Callable[[], float]) -> Any:
    # As concurrent.futures does: a handle given up on (timed out) is
    # cancelled, and the local is deleted to break the cycle handle ->
    # exception -> traceback -> this frame -> handle, so that a failed
    # task's arguments do not wait for the cycle collector.
    try:
        try:
            if deadline is None:
                return handle.result()
            return handle.result(max(0.0, deadline - clock()))
        finally:
            handle.cancel()
    finally:
        del handle
