"""A due-time heap and one timer thread that hands due items back.

Retries that wait out a backoff and delayed tasks wait here, not in a
sleeping worker. The scheduler knows nothing about tasks: it holds items
with due times and calls ``on_due(item)`` from its own thread when each
falls due. Time is a parameter, as in ``sched.scheduler(timefunc,
delayfunc)``: ``clock`` reads it and ``wait`` waits on it, so tests drive
the timer thread with a fake clock (or call :meth:`Scheduler.run_due`).

:meth:`Scheduler.schedule` returns the entry it made, which
:meth:`Scheduler.cancel` turns into a tombstone at once (dropping the
item); tombstones are swept out of the heap once they are half of it, so
cancelling costs O(1) and a cancelled item is never kept until its due time.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from time import monotonic
from typing import Any, Callable, FrozenSet, List, Optional, Tuple

from .validate import wait_seconds

__all__ = ["Scheduler", "Entry"]

log = logging.getLogger(__name__)

Entry = List[Any]
"""One held item: ``[due, sequence, item]``; compared by due time, then sequence."""

# What an entry's item becomes once it is cancelled, or handed over.
_CANCELLED, _HANDED = object(), object()
# Tombstones are swept when there are at least this many, and they are
# half the heap: rare enough to cost O(1) per cancel.
_SWEEP_AT = 64


class Scheduler:
    """Holds items until they are due, then passes each to ``on_due``.

    Args:
        on_due: called with each item once it is due, from the timer thread
            (or from the caller of :meth:`run_due`); it must not block long.
        clock: returns the current time in seconds; ``time.monotonic``.
        wait: ``wait(condition, timeout)``, called with ``condition`` held:
            returns once notified or once ``timeout`` seconds have passed on
            ``clock`` (``None``: only when notified). ``Condition.wait`` by
            default; a fake clock's ``wait`` in tests.
        name: the timer thread's name.

    Items due at the same time come out in the order they were scheduled.
    """

    def __init__(
        self,
        on_due: Callable[[Any], None],
        *,
        clock: Callable[[], float] = monotonic,
        wait: Optional[Callable[[threading.Condition, Optional[float]], object]] = None,
        name: str = "taskqueue-scheduler",
    ) -> None:
        self._on_due = on_due
        self._clock = clock
        self._wait = wait or _condition_wait
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._heap: List[Entry] = []
        self._tombstones = 0
        self._order = itertools.count()
        self._sealed: Optional[Callable[[Any], bool]] = None
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._looping = False  # the thread has taken the lock once: it runs

    def start(self) -> None:
        """Start the timer thread (a daemon); does nothing if it runs already.

        Returns once the thread has looked at its items and let go of the
        lock (it waits, or hands over what was due), so that a clock driven
        by a test already knows the thread when the test moves time on.
        """
        with self._cond:
            if self._thread is not None or self._stopping:
                return
            self._thread = thread = threading.Thread(target=self._loop, name=self._name,
                                                     daemon=True)
            thread.start()
            while not self._looping and thread.is_alive():
                self._cond.wait(0.05)  # woken as soon as the thread lets go of the lock

    def schedule(self, item: Any, due: float) -> Optional[Entry]:
        """Hold ``item`` until the clock reads ``due``.

        Returns:
            The entry made, for :meth:`cancel`; None, holding nothing, if
            the scheduler was sealed against items like this one (see
            :meth:`seal`).
        """
        with self._cond:
            if self._sealed is not None and self._sealed(item):
                return None
            entry = [due, next(self._order), item]
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:  # a new earliest: the timer must re-aim
                self._cond.notify()
            return entry

    def cancel(self, entry: Entry) -> bool:
        """Drop a held item before it is due; False if it was handed over or cancelled already."""
        with self._cond:
            if entry[2] is _CANCELLED or entry[2] is _HANDED:
                return False
            entry[2] = _CANCELLED
            self._tombstones += 1
            if self._tombstones >= _SWEEP_AT and 2 * self._tombstones >= len(self._heap):
                self._heap = [e for e in self._heap if e[2] is not _CANCELLED]
                heapq.heapify(self._heap)
                self._tombstones = 0
            return True

    def __len__(self) -> int:
        with self._cond:
            return len(self._heap) - self._tombstones

    def items(self) -> List[Tuple[float, Any]]:
        """Every held item with its due time, earliest first (a copy, for a look inside)."""
        with self._cond:
            held = [entry for entry in self._heap
                    if entry[2] is not _CANCELLED and entry[2] is not _HANDED]
        held.sort()
        return [(entry[0], entry[2]) for entry in held]

    def threads(self) -> FrozenSet[threading.Thread]:
        """The timer thread, once started (for "is this one of ours?")."""
        thread = self._thread
        return frozenset() if thread is None else frozenset((thread,))

    @property
    def on_timer_thread(self) -> bool:
        """Whether the caller is this scheduler's timer thread."""
        return self._thread is threading.current_thread()

    def seal(self, which: Callable[[Any], bool] = lambda item: True) -> List[Any]:
        """Take out the held items for which ``which(item)`` is true, and refuse such items from now on.

        Returns:
            The items taken, earliest first; the others stay held.
        """
        with self._cond:
            self._sealed = which
            live = [entry for entry in self._heap if entry[2] is not _CANCELLED]
            taken = sorted(entry for entry in live if which(entry[2]))
            self._heap = [entry for entry in live if not which(entry[2])]
            heapq.heapify(self._heap)
            self._tombstones = 0
            items = [entry[2] for entry in taken]
            for entry in taken:
                entry[2] = _HANDED
            return items

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop the timer thread and wait up to ``timeout`` for it to end.

        Items still held stay held (see :meth:`seal` to take them).
        """
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def run_due(self) -> Optional[float]:
        """Hand every item that is due now to ``on_due``.

        Returns:
            The due time of the next item still held, or None if none is.
        """
        with self._cond:
            due_items, _ = self._pop_due_locked()
        self._hand_over(due_items)
        with self._cond:  # on_due may have scheduled more
            self._drop_cancelled_head()
            return self._heap[0][0] if self._heap else None

    def _pop_due_locked(self) -> Tuple[List[Any], Optional[float]]:
        now = self._clock()
        heap = self._heap
        due_items = []
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            item, entry[2] = entry[2], _HANDED
            if item is _CANCELLED:
                self._tombstones -= 1
            else:
                due_items.append(item)
        self._drop_cancelled_head()
        return due_items, (heap[0][0] if heap else None)

    def _drop_cancelled_head(self) -> None:
        # Called with the lock held: the timer must aim at a live item.
        heap = self._heap
        while heap and heap[0][2] is _CANCELLED:
            heapq.heappop(heap)[2] = _HANDED
            self._tombstones -= 1

    def _hand_over(self, items: List[Any]) -> None:
        for item in items:
            try:
                self._on_due(item)
            except BaseException:  # one bad hand-over must not stop the timer
                log.exception("scheduler %s could not hand over %r", self._name, item)

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._looping:
                    self._looping = True
                    self._cond.notify_all()  # start() goes on once this lets go of the lock
                while True:
                    if self._stopping:
                        return
                    due_items, next_due = self._pop_due_locked()
                    if due_items:
                        break
                    timeout = None if next_due is None else max(0.0, next_due - self._clock())
                    # Cut to what Condition.wait accepts: a due time centuries
                    # away is waited for in steps, never by a dying thread.
                    self._wait(self._cond, None if timeout is None else wait_seconds(timeout))
            # on_due runs outside the lock so that it may schedule again.
            self._hand_over(due_items)
            due_items = []  # drop references to handed-over items


def _condition_wait(cond: threading.Condition, timeout: Optional[float]) -> object:
    return cond.wait(timeout)
