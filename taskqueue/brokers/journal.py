"""The durable broker: the in-process broker with every unfinished task in a SQLite file.

:class:`JournalBroker` is a :class:`~taskqueue.brokers.memory.MemoryBroker`
whose steps also write to a :class:`~taskqueue.journal.Journal`: a task is
on disk before ``submit`` returns; its start, retries, dead letter and end
are recorded as they happen (queued to the journal's writer, not waited
for); and when a queue starts on the file again, :meth:`JournalBroker.recover`
puts back what the last run left unfinished. The file itself, its checks
and its writer thread are :mod:`taskqueue.journal`'s business.

Only task functions registered on the queue can be journaled: the file
stores their registered name, never a path to import, and a restarted
program finds each function again by that name.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Dict, FrozenSet, List, Optional, Set

from ..deadletter import DeadLetter, MissingTaskFunction, error_text
from ..errors import JournalError, QueueClosed, TaskQueueError
from ..journal import DEAD, RUNNING, SCHEDULED, Journal, Row
from ..message import Message
from ..registry import TaskFunction
from ..retry import Backoff
from ..stats import WorkerTally
from ..status import TaskInfo
from ..task import Task, TaskHandle, TaskState
from .base import Binding
from .memory import MemoryBroker, MemoryConsumer

__all__ = ["JournalBroker", "JournalConsumer", "CRASHES_FORGIVEN", "error_text"]

log = logging.getLogger(__name__)

# A task found running after a restart was cut short by the stop (the cut
# attempt counts), and runs again even if that goes past its retries. But
# one whose attempts have gone past retries + CRASHES_FORGIVEN is taken to
# be what stops the process, and becomes a dead letter instead of stopping
# every restart: with retries=0, the third time it is found running.
CRASHES_FORGIVEN = 2


class JournalBroker(MemoryBroker):
    """A :class:`MemoryBroker` that keeps every unfinished task in a journal file.

    Args:
        journal: the open :class:`~taskqueue.journal.Journal` it writes to;
            the broker closes it on :meth:`shutdown`.

    ``TaskQueue(journal=PATH)`` makes one; see the README, "Durable journal".
    """

    blocking_submit = True  # enqueue waits for a disk commit

    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal
        """The journal file this broker writes to."""
        # Ids of tasks read back after a restart and not yet started again:
        # their first start is waited for (see JournalConsumer.start).
        self._resumed_ids: Set[str] = set()
        self._resumed_lock = threading.Lock()

    def bind(self, binding: Binding) -> None:
        """As :meth:`MemoryBroker.bind`."""
        super().bind(binding)
        self._lookup = binding.lookup
        self._message_for = binding.message_for
        self._workers = binding.workers
        self.journal.history = binding.history

    def start(self) -> None:
        """As :meth:`MemoryBroker.start`; the file notes who owns it, for those watching."""
        super().start()
        self.journal.record_owner(os.getpid(), socket.gethostname(), self._workers())

    # -- statuses ------------------------------------------------------------------

    def finished(self, message: Message, state: TaskState, error: Optional[str] = None) -> None:
        """As :meth:`MemoryBroker.finished`; the status is kept in the file too."""
        super().finished(message, state, error)
        if state is TaskState.CANCELLED and not self.accepting:
            return  # cancelled by a shutdown: it stays in the file, to run next time
        self._record_status(message, state, error)

    def _record_status(self, message: Message, state: TaskState, error: Optional[str]) -> None:
        wall = self._wall
        started = message.started_at
        self.journal.record_status(message.id, message.name, state.value, message.attempts,
                                   wall(message.submitted_at),
                                   None if started is None else wall(started), time.time(),
                                   error, message.priority)

    def _dead_status(self, task_id: str) -> Optional[TaskInfo]:
        # Where MemoryBroker.task_status, knowing no status of this run,
        # turns to its dead letters: the file first (statuses outlive a
        # restart). A letter read back after a restart knows no start and
        # carries its error wrapped (a TaskQueueError of the text), while
        # the file holds the status as it was when the task failed.
        info = self._stored_status(task_id)
        return info if info is not None else super()._dead_status(task_id)

    def _stored_status(self, task_id: str) -> Optional[TaskInfo]:
        if not self._history.limit:
            return None  # no statuses kept: the file holds none either
        try:
            found = self.journal.status(task_id)
        except JournalError:
            return None  # closed: what this run kept was all there was
        if found is None:
            return None
        name, state, attempts, submitted, started, finished, error, priority = found
        return TaskInfo(id=task_id, name=name, state=TaskState(state), attempts=attempts,
                        submitted_at=submitted, started_at=started, finished_at=finished,
                        error=error, priority=priority)

    def threads(self) -> FrozenSet[Any]:
        """The scheduler's thread and the journal's writer."""
        return super().threads() | self.journal.threads()

    # -- producers ----------------------------------------------------------------

    def enqueue(self, message: Message, block: bool = True,
                timeout: Optional[float] = None) -> TaskHandle:
        """Write the task to the journal, wait for the commit, then queue it.

        Raises:
            TypeError: the task is not a task function registered on this
                queue, or its arguments cannot be journaled; nothing is written.
            JournalError: the journal could not record it.
            QueueFull, QueueClosed: as :meth:`MemoryBroker.enqueue` (the row
                is then deleted again).
        """
        fn = message.fn
        if not isinstance(fn, TaskFunction) or self._lookup(fn.name) is not fn:
            raise TypeError(
                f"{self._work.name} has a journal, so it only takes task functions registered "
                f"on it with @queue.task (a restart finds them again by name); got {fn!r}")
        options = _journal_options(message.task, fn)
        args, kwargs, message.args, decoded = self.journal.encode(message.args, message.kwargs or {})
        # The task runs with what a restart would read back, from the first run on.
        message.kwargs = decoded or None
        task_id = uuid.uuid4().hex
        due = None if message.due is None else time.time() + (message.due - self._clock())
        try:
            self.journal.record_submit(task_id, fn.name, args, kwargs, options, due,
                                       submitted_at=self._wall(message.submitted_at))
        except JournalError:
            if not self.accepting:  # shut down meanwhile: say so, as submit does
                raise self.closed_error() from None
            raise
        message.id = task_id
        message.handle._id = task_id
        try:
            handle = super().enqueue(message, block=block, timeout=timeout)
        except BaseException:
            self.journal.record_done(task_id)
            raise
        if handle is not message.handle:  # a live task holds its key: this one was not queued
            self.journal.record_done(task_id)
        return handle

    # -- consumers ----------------------------------------------------------------

    def first_start_since_restart(self, task_id: str) -> bool:
        """Whether ``task_id`` was read back after a restart and starts now for the first time."""
        if not self._resumed_ids:  # the common case, without the lock
            return False
        with self._resumed_lock:
            if task_id in self._resumed_ids:
                self._resumed_ids.discard(task_id)
                return True
            return False

    def consumer(self, tally: WorkerTally) -> JournalConsumer:
        """A consumer that records starts and outcomes."""
        return JournalConsumer(self, tally)

    def cancelled(self, message: Message) -> None:
        """Forget a task cancelled while the queue runs; keep one that shutdown cancelled."""
        if self.accepting:
            self.journal.record_done(message.id)
        super().cancelled(message)

    # -- what is kept -------------------------------------------------------------

    def requeue(self, letter: DeadLetter, message: Message, *, block: bool = True,
                timeout: Optional[float] = None) -> TaskHandle:
        """As :meth:`MemoryBroker.requeue`; the letter's row goes once the new task is on disk."""
        handle = super().requeue(letter, message, block=block, timeout=timeout)
        self.journal.forget_dead(letter.task_id)
        return handle

    def purge_dead(self) -> int:
        """Forget every dead letter, in the file too."""
        self.journal.purge_dead()
        return super().purge_dead()

    def shutdown(self) -> None:
        """Stop the timer, then commit what is recorded and close the file."""
        super().shutdown()
        self.journal.close()

    def disown_after_fork(self) -> None:
        """The file belongs to the parent: the child's copy of its lock is let go."""

    # -- recovery ---------------------------------------------------------------------

    def recover(self) -> List[TaskHandle]:
        """Put back what the last run left unfinished; dead letters come back as such."""
        wall = time.time()
        try:
            rows = self.journal.recover()
        except JournalError:
            if not self.accepting:
                return []  # shut down meanwhile: the rows stay in the file for next time
            raise
        handles: List[TaskHandle] = []
        for row in rows:
            if row.state == DEAD:
                self.keep_dead(self._recovered_letter(row, TaskQueueError(row.error)))
                continue
            message = self._resumed_or_buried(row)
            if message is None:
                continue
            if row.state == SCHEDULED and row.due is not None and row.due > wall:
                message.due = self._clock() + (row.due - wall)  # what is left of the wait
            with self._resumed_lock:
                self._resumed_ids.add(row.id)
            try:
                self.enter_recovered(message)
            except QueueClosed:
                return handles  # shut down meanwhile: the rest stays in the journal
            handles.append(message.handle)
        return handles

    def _resumed_or_buried(self, row: Row) -> Optional[Message]:
        # The row as a message, or, if it cannot run, a dead letter saying why.
        fn = self._lookup(row.name)
        try:
            if fn is None:
                raise JournalError(
                    f"no task function named {row.name!r} is registered; register it "
                    "with @queue.task before the queue starts")
            if row.problem is not None:
                raise JournalError(f"task {row.id} in {self.journal.path}: {row.problem}")
            try:
                return self._resumed(row, fn)
            except (TypeError, ValueError) as exc:  # options no Task accepts
                raise JournalError(f"task {row.id} in {self.journal.path}: its options "
                                   f"cannot be used ({exc})") from None
        except TaskQueueError as exc:
            letter = self._recovered_letter(row, exc)
            self.keep_dead(letter)
            self.journal.record_dead(row.id, row.attempts, error_text(exc), "", letter.failed_at)
            log.error("journal %s: task %s (%s) cannot be resumed: %s",
                      self.journal.path, row.name, row.id, exc)
            return None

    def _resumed(self, row: Row, fn: Any) -> Message:
        options = dict(row.options)
        if options.get("backoff") is not None:
            options["backoff"] = Backoff(**options["backoff"])
        task = fn.task(*row.args, **row.kwargs).replace(delay=None, **options)
        message = self._message_for(task)
        message.id = row.id
        message.handle._id = row.id
        # Submitted when the file says (its status says so), on this queue's
        # clock (the inverse of self._wall); but it waits in this run's
        # queue from now: the restart's downtime is not counted as a wait.
        message.enqueued_at = message.submitted_at
        message.submitted_at = row.submitted_at - self._wall(0.0)
        message.attempts = row.attempts  # an attempt cut short by the crash counts
        message.handle._attempts = row.attempts
        if row.state == RUNNING and row.attempts > message.policy.retries + CRASHES_FORGIVEN:
            raise TaskQueueError(
                f"task {row.name} ({row.id}) was running when the process stopped, "
                f"{row.attempts} attempts in; it may be what stops the process, so it is "
                "not run again (requeue the dead letter to try once more)")
        return message

    def _recovered_letter(self, row: Row, exc: BaseException) -> DeadLetter:
        fn = self._lookup(row.name)
        args = row.args if isinstance(row.args, (list, tuple)) else [row.args]
        kwargs = row.kwargs if isinstance(row.kwargs, dict) else {}
        name = row.options.get("name") if isinstance(row.options.get("name"), str) else row.name
        return DeadLetter(
            task=Task(fn or MissingTaskFunction(row.name, error=JournalError), args, kwargs,
                      name=name),
            task_id=row.id,
            exception=exc,
            traceback=row.traceback or "",
            attempts=row.attempts,
            submitted_at=row.submitted_at,
            failed_at=row.failed_at if row.failed_at is not None else time.time(),
        )


class JournalConsumer(MemoryConsumer):
    """A :class:`MemoryConsumer` whose steps are also written to the journal."""

    def __init__(self, broker: JournalBroker, tally: WorkerTally) -> None:
        super().__init__(broker, tally)
        self._journal = broker.journal
        self._first_start = broker.first_start_since_restart

    def receive(self) -> Optional[Message]:
        """As :meth:`MemoryConsumer.receive`; the start is recorded (see below)."""
        message = super().receive()
        if message is not None:
            self._started(message)
        return message

    def resume(self, message: Message) -> bool:
        """As :meth:`MemoryConsumer.resume`; the start is recorded."""
        if not super().resume(message):
            return False
        self._started(message)
        return True

    def _started(self, message: Message) -> None:
        # A task read back after a restart may be what stopped the process:
        # its start is on disk before it runs, so that one that kills the
        # process at once is still counted (CRASHES_FORGIVEN). Other starts
        # are not waited for: a worker does not wait on the disk.
        self._journal.record_started(message.id, message.attempts,
                                     wait=self._first_start(message.id))

    def succeeded(self, message: Message, result: Any) -> None:
        """Forget the task in the file (keeping its status), then as :meth:`MemoryConsumer.succeeded`."""
        self._journal.record_done(message.id)
        self._broker._record_status(message, TaskState.SUCCEEDED, None)
        super().succeeded(message, result)

    def failed(self, message: Message, letter: DeadLetter) -> None:
        """Keep the dead letter in the file, then as :meth:`MemoryConsumer.failed`."""
        self._journal.record_dead(message.id, letter.attempts, error_text(letter.exception),
                                  letter.traceback, letter.failed_at)
        super().failed(message, letter)

    def retrying(self, message: Message, delay: float) -> None:
        """Record when the next attempt is due, then as :meth:`MemoryConsumer.retrying`."""
        self._journal.record_retry(message.id, message.attempts, time.time() + delay)
        super().retrying(message, delay)


def _journal_options(task: Optional[Task], fn: TaskFunction[Any]) -> Dict[str, Any]:
    # The task's own options as JSON values. Exception classes cannot be
    # written without importing by path on the way back, which a journal
    # must never do: retry_on comes from the registration only.
    if task is None:
        return {}
    if task.retry_on is not None and task.retry_on != fn.task().retry_on:
        raise TypeError(f"retry_on set for one submission of {fn.name!r} cannot be journaled "
                        "(exception classes are not written to the journal); set it in "
                        "@queue.task(retry_on=...)")
    options: Dict[str, Any] = {"retries": task.retries, "priority": task.priority,
                               "time_limit": task.time_limit, "key": task.key,
                               "backoff": None if task.backoff is None
                               else dataclasses.asdict(task.backoff)}
    if task.name != fn.name:
        options["name"] = task.name
    return options
