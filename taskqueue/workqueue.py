"""The bounded queue between producers and workers: a ``queue.Queue``.

``WorkQueue`` adds to ``queue.Queue`` what admission needs and nothing
else: a producer's put is refused with :class:`QueueClosed` once the queue
is closed (checked under the queue's own mutex, so no put can slip in after
a shutdown has swept the queue); work that is already accepted (a retry, a
requeue after a worker died) re-enters past the bound, so that a full queue
can never deadlock the pool against itself; and ``wait_all_done`` is
``join()`` with a timeout. ``unfinished_tasks`` counts accepted tasks that
are not yet terminal: a task is put once and marked done once, however many
attempts it takes. :meth:`WorkQueue.stop` makes a ``get`` that finds the
queue empty return None instead of waiting (how workers are told to stop:
no sentinel item shares the queue with the tasks).

Ordering lives in ``_init/_qsize/_put/_get``, as in CPython's
``PriorityQueue``: items may carry a ``priority`` (0 if not); a higher one comes out first,
and equal ones in the order they went in. The items wait in one FIFO deque
per priority level rather than in a heap of items, so that the common case,
where every task has the same priority, costs a deque append and popleft,
as a plain ``queue.Queue`` does, instead of O(log n) tuple comparisons. The
levels that hold items are kept in a heap of their own: a level that
appears or empties costs O(log levels), so a backlog in which every task
has a priority of its own (a deadline, say) stays cheap too.
"""

from __future__ import annotations

import queue
from _thread import allocate_lock as _allocate_lock
from collections import deque
from heapq import heappop, heappush
from time import monotonic
from typing import Any, Callable, Deque, Dict, List, Optional

from .errors import QueueClosed, QueueFull
from .validate import wait_seconds

__all__ = ["WorkQueue"]

# Empty priority levels kept, so that a level in steady use is not rebuilt
# each time the queue drains; past this many, empty ones are dropped.
_MAX_IDLE_LEVELS = 16


class WorkQueue(queue.Queue):  # type: ignore[type-arg]
    """A FIFO ``queue.Queue`` with closing, sealing and past-the-bound entry.

    Args:
        maxsize: how many items fit before a producer's put blocks; 0 for no
            bound.
        name: the owning queue's name, used in error messages.
    """

    # The highest priority queued (None when empty), kept by the ordering
    # hooks; a class default, so a subclass with other hooks reads None.
    _top: Any = None

    def __init__(self, maxsize: int = 0, name: str = "taskqueue") -> None:
        super().__init__(maxsize)
        self.name = name
        self.accepting = True
        """False once closed: producers' puts raise QueueClosed."""
        self.sealed = False
        """True once sealed: even accepted work may no longer re-enter."""
        self.admitted = 0
        """How many items producers have put (under the mutex)."""
        self.stopping = False
        """True once stopped: a get that finds the queue empty returns None."""
        self._room_waiters: List[Callable[[], object]] = []
        # Threads waiting in get() for an item, each on a lock of its own,
        # oldest first (under the mutex): a put releases one directly.
        # Condition.notify would do the same in Python code, once per task.
        self._item_waiters: Deque[Any] = deque()
        # How many threads wait in admit() for room: a notify with nobody
        # waiting is skipped.
        self._waiting_for_room = 0

    # -- ordering (override these to change it) ------------------------------

    def _init(self, maxsize: int) -> None:
        self._buckets: Dict[Any, Deque[Any]] = {}  # every level kept, empty or not
        # The levels that hold items, as a heap of negated priorities, and the
        # highest of them with its bucket (what _get takes from next). _top is
        # one attribute, replaced whole, so that outranked() can read it
        # without the mutex.
        self._levels: List[Any] = []
        self._top: Any = None
        self._top_bucket: Optional[Deque[Any]] = None
        self._size = 0

    def _qsize(self) -> int:
        return self._size

    def _put(self, item: Any) -> None:
        priority = getattr(item, "priority", 0)
        bucket = self._buckets.get(priority)
        if bucket is None:
            bucket = self._new_level(priority)
        if not bucket:  # the level starts holding items: it joins the heap
            heappush(self._levels, -priority)
            if self._top_bucket is None or priority > self._top:
                self._top, self._top_bucket = priority, bucket
        bucket.append(item)
        self._size += 1

    def _get(self) -> Any:
        bucket = self._top_bucket
        if bucket is None:
            raise IndexError("get from an empty WorkQueue")
        item = bucket.popleft()
        self._size -= 1
        if not bucket:  # the level emptied: the next one down is on top
            heappop(self._levels)
            if self._levels:
                self._top = -self._levels[0]
                self._top_bucket = self._buckets[self._top]
            else:
                self._top, self._top_bucket = None, None
        return item

    def _new_level(self, priority: Any) -> Deque[Any]:
        if len(self._buckets) >= len(self._levels) + _MAX_IDLE_LEVELS:
            # Forget the empty levels: O(levels), once per that many new ones.
            self._buckets = {p: b for p, b in self._buckets.items() if b}
        bucket: Deque[Any] = deque()
        self._buckets[priority] = bucket
        return bucket

    # -- taking and finishing (queue.Queue's own, leaner) ---------------------
    #
    # The same contract as queue.Queue's get/put/task_done, written against
    # the mutex directly: Queue's versions enter Python-level Condition
    # methods three times per item and notify even when nobody waits. On
    # the hot path each of those is a stretch in which the mutex is held
    # while the GIL can pass to another thread, and everyone else then waits.

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """Remove and return the next item, as ``queue.Queue.get`` does.

        Returns:
            The item; None if the queue is empty and stopped (see :meth:`stop`).

        Raises:
            queue.Empty: none came (at once without ``block``, or within ``timeout``).
            ValueError: ``timeout`` is negative.
        """
        with self.mutex:
            if not self._qsize() and not self._wait_for_item(block, timeout):
                return None
            item = self._get()
            self._made_room()
            return item

    def _wait_for_item(self, block: bool, timeout: Optional[float]) -> bool:
        # Called with the mutex held. False: stopped with nothing queued.
        if self.stopping:
            return False
        if not block:
            raise queue.Empty
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        deadline = None if timeout is None else monotonic() + timeout
        while not self._qsize():
            if self.stopping:
                return False
            remaining = None if deadline is None else deadline - monotonic()
            if remaining is not None and remaining <= 0:
                raise queue.Empty
            self._wait_for_a_put(remaining)
        return True

    def _wait_for_a_put(self, remaining: Optional[float]) -> None:
        # Condition.wait's own steps, on our waiter list. Called with the
        # mutex held; returns with it held. A waiter woken just as it timed
        # out still finds the item: the caller looks at the queue again.
        waiter = _allocate_lock()
        waiter.acquire()
        self._item_waiters.append(waiter)
        self.mutex.release()
        woken = False
        try:
            woken = waiter.acquire(True, -1 if remaining is None else wait_seconds(remaining))
        finally:
            self.mutex.acquire()
            if not woken:
                try:
                    self._item_waiters.remove(waiter)
                except ValueError:
                    pass  # released meanwhile by a put

    def finish_and_get(self, finished: int) -> Any:
        """Mark ``finished`` items done, then take the next item, waiting for one.

        A worker's ``task_done`` for the task it finished and ``get`` for its
        next one, in a single trip through the mutex instead of two.

        Returns:
            The item; None once the queue is empty and stopped.

        Raises:
            ValueError: ``finished`` is more than the items not yet done.
        """
        # _mark_done's and get()'s bodies, written out rather than shared
        # through calls: this runs once per task on every worker.
        with self.mutex:
            if finished:
                unfinished = self.unfinished_tasks - finished
                if unfinished <= 0:
                    if unfinished < 0:
                        raise ValueError("task_done() called too many times")
                    self.all_tasks_done.notify_all()
                self.unfinished_tasks = unfinished
            if not self._qsize() and not self._wait_for_item(True, None):
                return None
            item = self._get()
            if self._waiting_for_room:  # as _made_room
                self.not_full.notify()
            if self._room_waiters:
                self._wake_room_waiters()
            return item

    def put(self, item: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """A producer's put: :meth:`admit` (it may raise QueueClosed too)."""
        self.admit(item, block=block, timeout=timeout)

    def task_done(self, count: int = 1) -> None:
        """Mark ``count`` accepted items as ended, as ``queue.Queue.task_done`` does one.

        Raises:
            ValueError: more items marked done than were accepted (none is then marked).
        """
        with self.mutex:
            self._mark_done(count)

    def _mark_done(self, count: int) -> None:
        # Called with the mutex held.
        unfinished = self.unfinished_tasks - count
        if unfinished <= 0:
            if unfinished < 0:
                raise ValueError("task_done() called too many times")
            self.all_tasks_done.notify_all()
        self.unfinished_tasks = unfinished

    def _made_room(self) -> None:
        # Called with the mutex held, after an item left: tell a producer
        # waiting for room, and any async producer (asubmit) waiting.
        if self._waiting_for_room:
            self.not_full.notify()
        if self._room_waiters:
            self._wake_room_waiters()

    def _wake_a_worker(self) -> None:
        # Called with the mutex held, after an item went in.
        if self._item_waiters:
            self._item_waiters.popleft().release()

    # -- admission ------------------------------------------------------------

    def admit(self, item: Any, *, block: bool = True, timeout: Optional[float] = None,
              bounded: bool = True, exempt: Optional[Callable[[], bool]] = None) -> None:
        """Accept a new item from a producer, waiting for room if needed.

        Args:
            block: wait for room; when False, raise QueueFull at once if full.
            timeout: with ``block``, the most seconds to wait for room.
            bounded: False lets the item past ``maxsize`` (a worker thread
                submitting into its own queue must not wait for itself).
            exempt: asked, only when the queue is full, whether to let the
                item past ``maxsize`` all the same (cheaper than asking always).

        Raises:
            QueueClosed: the queue is closed, now or while waiting.
            QueueFull: no room within ``timeout`` (or at once, without ``block``).
        """
        with self.mutex:
            if bounded and 0 < self.maxsize <= self._qsize() and not (exempt and exempt()):
                self._wait_for_room(block, timeout)
            if not self.accepting:
                raise self.closed_error()
            self._put(item)
            self.admitted += 1
            self.unfinished_tasks += 1
            if self._item_waiters:  # as _wake_a_worker
                self._item_waiters.popleft().release()

    def _wait_for_room(self, block: bool, timeout: Optional[float]) -> None:
        # Called with the mutex held; also wakes (and fails) on close.
        deadline = None if timeout is None else monotonic() + timeout
        while self.accepting and self._qsize() >= self.maxsize:
            remaining = None if deadline is None else deadline - monotonic()
            if not block or (remaining is not None and remaining <= 0):
                raise QueueFull(
                    f"{self.name} is full ({self.maxsize} tasks queued); "
                    "add workers, raise maxsize, or wait longer (submit_timeout)")
            self._waiting_for_room += 1
            try:
                self.not_full.wait(None if remaining is None else wait_seconds(remaining))
            finally:
                self._waiting_for_room -= 1

    def reenter(self, item: Any) -> bool:
        """Put back an item that was accepted before, past the bound.

        Returns:
            False, putting nothing, if the queue is sealed.
        """
        with self.mutex:
            if self.sealed:
                return False
            self._put(item)
            self._wake_a_worker()
            return True

    def outranked(self, priority: Any) -> bool:
        """Whether an item that ``priority`` must not overtake is waiting, or re-entry is sealed.

        True if the queue is sealed or an item of higher priority is queued.

        A hint, read without the mutex: the answer may be out of date by the
        time it is used, as it could be an instant after any locked read.
        Every read is of one whole object (a flag, the top level's
        priority), so it is also safe without the GIL. Taking the mutex here,
        once per failed attempt, made workers that retry convoy behind the
        producers on it: four workers retrying ran at a third of one.
        """
        if self.sealed:
            return True
        top = self._top
        return top is not None and top > priority

    def stop(self) -> None:
        """From now on, a get that finds the queue empty returns None; wake those waiting.

        Items still queued are handed out first: workers drain, then stop.
        """
        with self.mutex:
            self.stopping = True
            while self._item_waiters:
                self._item_waiters.popleft().release()

    def close(self) -> None:
        """Refuse producers from now on; wake any waiting for room."""
        with self.mutex:
            self.accepting = False
            self.not_full.notify_all()
            self._wake_room_waiters()

    def seal(self) -> List[Any]:
        """Close, refuse re-entries too, and return every item still queued."""
        with self.mutex:
            self.accepting = False
            self.sealed = True
            items = []
            while self._qsize():
                items.append(self._get())
            self.not_full.notify_all()
            self._wake_room_waiters()
            return items

    def waiting(self) -> Dict[Any, List[Any]]:
        """The items queued now, by priority, each level in the order it is taken (a copy)."""
        with self.mutex:
            return {priority: list(bucket) for priority, bucket in self._buckets.items() if bucket}

    def wait_all_done(self, timeout: Optional[float] = None) -> bool:
        """Wait until every accepted item is marked done; False on timeout."""
        deadline = None if timeout is None else monotonic() + timeout
        with self.all_tasks_done:
            while self.unfinished_tasks:
                remaining = None if deadline is None else deadline - monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self.all_tasks_done.wait(None if remaining is None else wait_seconds(remaining))
            return True

    def admit_deferred(self, item: Any) -> None:
        """Count a new item as accepted without queuing it (it is held elsewhere, e.g. delayed).

        It enters later through :meth:`reenter`; it is marked done like any other.

        Raises:
            QueueClosed: the queue is closed.
        """
        with self.mutex:
            if not self.accepting:
                raise self.closed_error()
            self.admitted += 1
            self.unfinished_tasks += 1

    def when_room(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` once the queue has room (at once if it has now, or is closed).

        It is called with the queue's mutex held, from whichever thread makes
        the room: it must only hand the news on (e.g. to an event loop).
        """
        with self.mutex:
            if not self.accepting or self.maxsize <= 0 or self._qsize() < self.maxsize:
                callback()
            else:
                self._room_waiters.append(callback)

    def _wake_room_waiters(self) -> None:
        waiters, self._room_waiters = self._room_waiters, []
        for callback in waiters:
            callback()

    def closed_error(self) -> QueueClosed:
        """Return the error a producer gets from a closed queue."""
        return QueueClosed(
            f"{self.name} is shut down and accepts no new tasks; "
            "submit to a new TaskQueue instead")
