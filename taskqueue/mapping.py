"""A lazy, bounded ``map``: results in input order, a fixed number in flight.

``Executor.map`` submits every item before it returns, so mapping over a
generator of ten million items builds ten million futures. :func:`lazy_map`
keeps at most ``buffersize`` submitted tasks whose results the caller has not
yet been given, and pulls the next input item only when a result is handed
out. It knows nothing of the queue: it is given the queue's ``submit``.
"""

from __future__ import annotations

import collections
from itertools import islice
from concurrent.futures import Future
from time import monotonic
from typing import Any, Callable, Deque, Generator, Iterable, Iterator, Optional, Tuple

from . import validate

__all__ = ["lazy_map"]

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

    Closing the iterator, dropping it, or an exception leaving it cancels
    every task it submitted whose result was not handed out (a task already
    running finishes, as ``Future.cancel`` allows).

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
    results = _results(submit, fn, items, buffersize, deadline, clock)
    # Run the generator to its first (empty) yield: the first batch is
    # submitted now, and from here on the generator is suspended inside its
    # try, so closing or garbage-collecting it even before the first result
    # runs the finally that cancels what is in flight.
    next(results)
    return results


def _results(
    submit: Submit,
    fn: Callable[..., Any],
    items: Iterator[Tuple[Any, ...]],
    buffersize: int,
    deadline: Optional[float],
    clock: Callable[[], float],
) -> Generator[Any, None, None]:
    in_flight: Deque[Future[Any]] = collections.deque()
    try:
        for args in islice(items, buffersize):
            in_flight.append(submit(fn, *args))
        yield None  # primed: see lazy_map
        while in_flight:
            result = _result_or_cancel(in_flight.popleft(), deadline, clock)
            # Refill before handing the result out, so that the pool keeps
            # working while the caller deals with it; the handle just popped
            # is done, so no more than buffersize are ever in flight.
            for args in islice(items, 1):
                in_flight.append(submit(fn, *args))
            yield result
    finally:
        for handle in in_flight:
            handle.cancel()


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
