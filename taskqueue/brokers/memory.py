"""The in-process broker: a bounded queue, a scheduler, unique keys, dead letters.

:class:`MemoryBroker` is the default :class:`~taskqueue.brokers.base.Broker`:
messages wait in a bounded :class:`~taskqueue.workqueue.WorkQueue` (one FIFO
per priority level), retries and delays in a
:class:`~taskqueue.scheduler.Scheduler` until they are due, keyed tasks in
:class:`~taskqueue.unique.UniqueKeys`, and failures in a bounded
:class:`~taskqueue.deadletter.DeadLetterStore`. A message's handle is the
caller's own, resolved here as the outcomes come.

Acknowledging is marking a task done on the work queue (``task_done``),
once per task, when it has ended: ``join()`` waits on that count. A
consumer pays the acknowledgement of the task it finished with its next
``receive()``, in the same trip through the queue's mutex; a crashed
worker's consumer pays what it owed (:meth:`MemoryConsumer.crashed`).

Everything is lost if the process dies; :class:`~taskqueue.brokers.journal.JournalBroker`
is the same broker with a SQLite file behind it.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

from ..deadletter import DeadLetter, DeadLetterStore, error_text
from ..errors import QueueClosed, QueueFull
from ..message import Message
from ..scheduler import Scheduler
from ..stats import WorkerTally
from ..status import History, Overview, TaskInfo, WallClock, info_of
from ..task import TaskHandle, TaskState, status_key
from ..unique import BUSY, UniqueKeys
from ..workqueue import WorkQueue
from .base import Binding, Broker, BrokerCounts, Callbacks, Consumer

__all__ = ["MemoryBroker", "MemoryConsumer"]

_SUCCEEDED = TaskState.SUCCEEDED  # looked up once: used per task


class MemoryBroker(Broker):
    """Messages kept in this process; the default broker of a TaskQueue.

    Bind it to one queue (``TaskQueue(broker=MemoryBroker())``, or leave the
    default). Its bound is the queue's ``maxsize``; retries and delays wait
    past the bound, so a full queue never deadlocks against its own retries.
    """

    def __init__(self) -> None:
        self._binding: Optional[Binding] = None
        self._lock = threading.Lock()  # guards the cancelled count
        self._cancelled = 0

    # -- binding and lifecycle ---------------------------------------------------

    def bind(self, binding: Binding) -> None:
        """Become the broker of the queue ``binding`` describes; once."""
        if self._binding is not None:
            raise RuntimeError(f"this broker already serves {self._binding.name!r}; "
                               "give each TaskQueue a broker of its own")
        self._binding = binding
        self._clock = binding.clock
        self._exempt = binding.exempt
        self._work = self._make_work_queue(binding)
        self._scheduler = Scheduler(self._due, clock=binding.clock, wait=binding.wait,
                                    name=f"{binding.name}-scheduler")
        self._keys = UniqueKeys()
        self._dead = DeadLetterStore(binding.dead_letter_limit)
        # Every task taken in and not yet ended, by status key (see
        # Message.status_key), for task_status(); and the finished ones.
        self._live: Dict[Any, Message] = {}
        self._wall = WallClock(binding.clock)
        self._history = History(binding.history, self._wall)
        self._consumers: "weakref.WeakSet[MemoryConsumer]" = weakref.WeakSet()

    def _make_work_queue(self, binding: Binding) -> WorkQueue:
        """The ready queue; a subclass may order it otherwise (override WorkQueue's hooks)."""
        return WorkQueue(binding.maxsize, binding.name)

    def start(self) -> None:
        """Start the scheduler's timer thread."""
        self._scheduler.start()

    def shutdown(self) -> None:
        """Stop the timer thread (what it still holds stays held, unstarted)."""
        self._scheduler.stop()

    def threads(self) -> FrozenSet[threading.Thread]:
        """The scheduler's timer thread, once started."""
        return self._scheduler.threads()

    # -- producers ----------------------------------------------------------------

    def enqueue(self, message: Message, block: bool = True,
                timeout: Optional[float] = None) -> TaskHandle:
        """Queue ``message`` (see :meth:`Broker.enqueue`)."""
        # Known as live before a worker can see it (and end it); forgotten
        # again if it is not taken in.
        live, key = self._live, message.status_key
        live[key] = message
        try:
            if message.key is None and message.due is None:  # the common case, flat
                self._work.admit(message, block=block, timeout=timeout, exempt=self._exempt)
                return message.handle
            if message.key is not None:
                handle = self._enqueue_unique(message, block, timeout)
                if handle is not message.handle:  # a live task holds the key
                    live.pop(key, None)
                return handle
            self._enter(message, block, timeout)
            return message.handle
        except BaseException:
            live.pop(key, None)
            raise

    def _enter(self, message: Message, block: bool, timeout: Optional[float]) -> None:
        if message.due is None:
            self._work.admit(message, block=block, timeout=timeout, exempt=self._exempt)
            return
        # Accepted (and counted) now; it waits in the scheduler, not in the
        # queue, and enters the queue past the bound when due.
        message.handle._set_scheduled(True)
        self._work.admit_deferred(message)
        if not self._scheduler.schedule(message, message.due):
            message.handle.cancel()  # shutdown is sealing: what waits is cancelled

    def _enqueue_unique(self, message: Message, block: bool,
                        timeout: Optional[float]) -> TaskHandle:
        key, handle = message.key, message.handle
        holder = self._keys.claim(key, handle, timeout if block else 0.0)  # type: ignore[arg-type]
        if holder is BUSY:
            raise QueueFull(f"a task with key {key!r} is still waiting for room in "
                            f"{self._work.name}; wait longer (submit_timeout) or retry")
        if holder is not None:
            return holder  # type: ignore[return-value]
        try:
            self._enter(message, block, timeout)
        except BaseException:
            self._keys.release(key, handle)  # type: ignore[arg-type]
            raise
        self._keys.admitted(handle)
        return handle

    def enter_recovered(self, message: Message) -> None:
        """Take in a message read back after a restart: past the bound, keys claimed.

        Raises:
            QueueClosed: the queue was shut down meanwhile; nothing of the
                message is kept (its row stays for the next run).
        """
        self._live[message.status_key] = message
        if message.key is not None and self._keys.claim(message.key, message.handle, 0.0) is None:
            self._keys.admitted(message.handle)
        try:
            if message.due is None:
                self._work.admit(message, bounded=False)
            else:
                self._enter(message, False, None)
        except BaseException:
            # Not taken in: not live, and not holding its key.
            self._live.pop(message.status_key, None)
            if message.key is not None:
                self._keys.release(message.key, message.handle)
            raise

    def when_room(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` once the queue has room (at once if it has, or is closed)."""
        self._work.when_room(callback)

    # -- consumers ----------------------------------------------------------------

    def consumer(self, tally: WorkerTally) -> MemoryConsumer:
        """A consumer for one worker thread."""
        consumer = MemoryConsumer(self, tally)
        self._consumers.add(consumer)
        return consumer

    def _due(self, message: Message) -> None:
        # On the scheduler's thread: a retry or a delayed task is due.
        message.handle._set_scheduled(False)
        self._reenter(message)

    def _reenter(self, message: Message) -> None:
        # Back into the queue past the bound: a retry that is due, a delayed
        # task, or the task of a dead worker. Once shutdown has sealed the
        # queue, it is cancelled instead.
        message.enqueued_at = self._clock()
        if not self._work.reenter(message):
            message.handle.cancel()

    # -- cancelling, sealing, stopping ----------------------------------------------

    def withdraw(self, handle: TaskHandle) -> Optional[Tuple[Message, Callbacks]]:
        """Mark a waiting task cancelled: no worker will start it (it skips it)."""
        message = handle._message
        callbacks = handle._mark_cancelled()
        if callbacks is None or message is None:
            return None
        return message, callbacks

    def cancelled(self, message: Message) -> None:
        """Count a withdrawn message as cancelled and free its key."""
        with self._lock:
            self._cancelled += 1
        self.finished(message, TaskState.CANCELLED)
        if message.key is not None:
            self._keys.release(message.key, message.handle)

    def ack(self, message: Message) -> None:
        """Mark a cancelled task done on the work queue."""
        self._work.task_done()

    def seal(self) -> List[Message]:
        """Close, refuse re-entries, and take out everything queued or scheduled."""
        return self._work.seal() + self._scheduler.seal()

    def close(self) -> None:
        """Refuse producers from now on; wake those waiting for room."""
        self._work.close()

    @property
    def accepting(self) -> bool:
        """Whether producers may still put messages in."""
        return self._work.accepting

    @property
    def sealed(self) -> bool:
        """Whether even accepted work may no longer re-enter (shutdown is cancelling)."""
        return self._work.sealed

    def wait_idle(self, timeout: Optional[float]) -> bool:
        """Wait until every accepted task is acknowledged."""
        return self._work.wait_all_done(timeout)

    def stop_consumers(self) -> None:
        """Consumers drain what is queued, then receive None."""
        self._work.stop()

    def closed_error(self) -> QueueClosed:
        """The error a producer gets from a closed queue."""
        return self._work.closed_error()

    # -- statuses ----------------------------------------------------------------------

    def finished(self, message: Message, state: TaskState, error: Optional[str] = None) -> None:
        """Remember the status of a task that has just ended, and forget it as live.

        Called by the step that ends it, before its handle is resolved: a
        look-up in between finds it live, or finished, never neither.
        """
        history = self._history
        if history.limit:
            history.add(message, state, self._clock(), error)
        self._live.pop(message.status_key, None)

    def task_status(self, task_id: str) -> Optional[TaskInfo]:
        """The status of ``task_id``: live in this process, or among the last finished."""
        key = status_key(task_id)
        message = self._live.get(key)
        if message is not None:
            state = message.handle.state
            if not state.terminal:  # else it ended just now: its history says how
                return info_of(message, state, self._wall)
            found = self._history.get(key, task_id)
            if found is None:  # being cancelled: marked so, not yet recorded
                return TaskInfo(id=task_id, name=message.name, state=state,
                                attempts=message.attempts,
                                submitted_at=self._wall(message.submitted_at),
                                priority=message.priority)
            return found
        found = self._history.get(key, task_id)
        return found if found is not None else self._dead_status(task_id)

    def _dead_status(self, task_id: str) -> Optional[TaskInfo]:
        # A dead letter outlives its task's status (10,000 of each by default,
        # but statuses go with every task, letters with failures only): its
        # task is still known as failed while the letter is held.
        for letter in reversed(self._dead.letters()):
            if letter.task_id == task_id:
                return TaskInfo(id=task_id, name=letter.task.name, state=TaskState.FAILED,
                                attempts=letter.attempts, submitted_at=letter.submitted_at,
                                finished_at=letter.failed_at,
                                error=error_text(letter.exception), priority=letter.task.priority)
        return None

    def cancel_task(self, task_id: str) -> bool:
        """Cancel ``task_id`` if it waits (its handle's ``cancel()``); False if started or unknown."""
        message = self._live.get(status_key(task_id))
        if message is not None:
            return message.handle.cancel()
        info = self._history.get(status_key(task_id), task_id)
        return info is not None and info.state is TaskState.CANCELLED

    def overview(self, limit: int) -> Overview:
        """What is queued (by priority), scheduled (soonest first) and running, here."""
        pending = {}
        for priority, messages in self._work.waiting().items():
            waiting = sum(1 for m in messages if not m.handle.done())
            if waiting:
                pending[priority] = waiting
        wall = self._wall
        scheduled = [info_of(m, TaskState.SCHEDULED, wall) for m in self._scheduled()[:limit]]
        running = []
        for consumer in list(self._consumers):
            message = consumer.current
            if message is not None and message.handle.running() and len(running) < limit:
                running.append(info_of(message, TaskState.RUNNING, wall))
        return Overview(pending_by_priority=pending, scheduled=scheduled, running=running)

    def _scheduled(self) -> List[Message]:
        # Waiting for a due time and not cancelled meanwhile, soonest first.
        return [m for _, m in self._scheduler.items() if not m.handle.done()]

    # -- what is kept ----------------------------------------------------------------

    def recover(self) -> List[TaskHandle]:
        """Nothing survives a restart in memory: no handles."""
        return []

    def dead_letters(self) -> List[DeadLetter]:
        """The dead letters held, oldest first (a copy)."""
        return self._dead.letters()

    def keep_dead(self, letter: DeadLetter) -> None:
        """Keep ``letter`` (a failure; for a subclass, one read back)."""
        self._dead.add(letter)

    def requeue(self, letter: DeadLetter, message: Message, *, block: bool = True,
                timeout: Optional[float] = None) -> TaskHandle:
        """Forget ``letter`` and queue ``message`` in its place (one-shot per letter)."""
        if not self._dead.remove(letter):
            raise ValueError(f"dead letter {letter.task_id} is not held: it was requeued or "
                             "purged already, or dropped past dead_letter_limit")
        try:
            return self.enqueue(message, block=block, timeout=timeout)
        except BaseException:
            self._dead.add(letter)  # not taken in: the letter stays, nothing is lost
            raise

    def purge_dead(self) -> int:
        """Forget every dead letter."""
        return self._dead.clear()

    def counts(self) -> BrokerCounts:
        """Submitted and cancelled tasks and the dead letters (the workers count the rest)."""
        with self._work.mutex:
            submitted = self._work.admitted
        held, dropped = self._dead.counts()
        with self._lock:
            cancelled = self._cancelled
        return BrokerCounts(submitted=submitted, cancelled=cancelled, dead_letters=held,
                            dead_letters_dropped=dropped, scheduled=len(self._scheduled()))

    def __repr__(self) -> str:
        name = self._binding.name if self._binding is not None else "unbound"
        return f"<{type(self).__name__} {name!r}>"


class MemoryConsumer(Consumer):
    """One worker's side of a :class:`MemoryBroker`.

    Used by its worker thread only (or, for an abandoned or dead worker, by
    whoever settles for it).
    """

    def __init__(self, broker: MemoryBroker, tally: WorkerTally) -> None:
        self._broker = broker
        self._work = broker._work
        self._finish_and_get = broker._work.finish_and_get
        self._clock = broker._clock
        self.tally = tally
        self.current: Optional[Message] = None
        self._unacked = 0  # tasks ended and not yet marked done: paid with the next receive
        history = broker._history
        self._remember = history.add if history.limit else None
        self._forget = broker._live.pop

    def receive(self) -> Optional[Message]:
        """The next message, started; None once stopped and drained.

        Messages cancelled while they waited are skipped (whoever cancelled
        them settled them).
        """
        finish_and_get = self._finish_and_get
        while True:
            # What this consumer owes is paid here, with the next get: one
            # trip through the queue's mutex per task, not two.
            finished, self._unacked = self._unacked, 0
            message = finish_and_get(finished)
            if message is None:
                return None
            attempt = message.attempts + 1
            if message.handle._begin(attempt):
                message.attempts = attempt
                self.current = message
                tally = self.tally
                tally.running = 1
                if attempt > 1:
                    tally.retried += 1
                return message  # type: ignore[no-any-return]

    def resume(self, message: Message) -> bool:
        """Start a retry this consumer kept (see :meth:`reschedule`); False if it will not run."""
        if self._work.sealed:
            # Shutdown is cancelling what has not started: this retry has not.
            self.current = None
            message.handle.cancel()
            return False
        attempt = message.attempts + 1
        if not message.handle._begin(attempt):
            self.current = None  # someone cancelled it meanwhile, and settled it
            return False
        message.attempts = attempt
        tally = self.tally
        tally.running = 1
        tally.retried += 1
        return True

    def succeeded(self, message: Message, result: Any) -> None:
        """Resolve the handle with ``result``, then free the key."""
        tally = self.tally
        tally.running = 0
        tally.succeeded += 1
        # As broker.finished(), inlined: this is every task's way to its end.
        remember = self._remember
        if remember is not None:
            remember(message, _SUCCEEDED, self._clock())
        self._forget(message.status_key, None)
        message.handle._succeed(result)
        if message.key is not None:  # after the handle is done: see unique.py
            self._broker._keys.release(message.key, message.handle)

    def failed(self, message: Message, letter: DeadLetter) -> None:
        """Keep the dead letter, fail the handle, then free the key."""
        tally = self.tally
        tally.running = 0
        tally.failed += 1
        self._broker.keep_dead(letter)
        self._broker.finished(message, TaskState.FAILED, error_text(letter.exception))
        message.handle._fail(letter.exception)
        if message.key is not None:
            self._broker._keys.release(message.key, message.handle)

    def retrying(self, message: Message, delay: float) -> None:
        """The handle goes back to waiting (SCHEDULED while a backoff runs)."""
        self.tally.running = 0
        message.handle._back_to_pending(scheduled=delay > 0)

    def reschedule(self, message: Message, delay: float) -> Optional[Message]:
        """Hold the retry until due; keep one due now unless a more urgent task waits."""
        if delay <= 0 and not self._work.outranked(message.priority):
            # No wait and nothing more urgent queued: this worker runs the
            # retry next, sparing a trip through the queue (and the lock
            # every producer and worker contends for).
            return message
        self.current = None
        if delay <= 0:
            self._broker._reenter(message)
            return None
        message.due = self._clock() + delay
        if not self._broker._scheduler.schedule(message, message.due):
            message.handle.cancel()  # shutdown is cancelling what has not started
        return None

    def ack(self, message: Message) -> None:
        """Owe the queue one task done, paid with the next receive (or by :meth:`crashed`)."""
        self._unacked += 1
        self.current = None

    def flush(self) -> None:
        """Mark done on the queue the tasks acknowledged since the last receive."""
        if self._unacked:
            unacked, self._unacked = self._unacked, 0
            self._work.task_done(unacked)

    def crashed(self) -> None:
        """Pay what is owed and put back what this consumer held: it may run twice, never lost."""
        self.flush()
        message, self.current = self.current, None
        if message is None:
            return
        self.tally.running = 0
        handle = message.handle
        if handle._back_to_pending(scheduled=False) or not handle.done():
            # Running, or a retry kept for nobody but this consumer.
            self._broker._reenter(message)
        elif not handle.cancelled():  # it ended; only its acknowledgement was lost
            self._work.task_done()
