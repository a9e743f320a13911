"""The journal's side of TaskQueue: writing submissions down, resuming after a restart.

:class:`JournalSupport` is a mixin of :class:`~taskqueue.pool.TaskQueue`,
kept apart so that the in-memory queue reads without it: everything here
runs only for a queue made with ``journal=``. The file itself is the
business of :mod:`taskqueue.journal`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from typing import Any, Optional

from .deadletter import DeadLetter
from .errors import JournalError, QueueClosed, TaskQueueError
from .events import Event, EventKind
from .journal import DEAD, RUNNING, SCHEDULED, Journal, Row
from .registry import TaskFunction
from .retry import Backoff
from .task import Task, TaskHandle

__all__ = ["JournalSupport", "error_text"]

log = logging.getLogger(__name__)

# A task found running after a restart was cut short by the stop (the cut
# attempt counts), and runs again even if that goes past its retries. But
# one whose attempts have gone past retries + CRASHES_FORGIVEN is taken to
# be what stops the process, and becomes a dead letter instead of stopping
# every restart: with retries=0, the third time it is found running.
CRASHES_FORGIVEN = 2


class JournalSupport:
    """What a TaskQueue does with its journal (a mixin; see the module docstring).

    Its methods use the queue's own parts (``self`` is the TaskQueue); they
    are typed ``self: Any`` because this module sits below ``pool``.
    """

    _journal: Optional[Journal]
    _recovered: int

    @property
    def recovered(self: Any) -> int:
        """How many unfinished tasks the journal gave back when this queue started.

        Dead letters read back are not counted (see :meth:`dead_letters`);
        0 for a queue without a journal, or before it starts.
        """
        return self._recovered

    def _admit_journaled(self: Any, handle: TaskHandle, block: bool,
                         timeout: Optional[float]) -> TaskHandle:
        # On disk first, then into the queue: once submit returns, a crash
        # cannot lose the task. If the queue then refuses it, the row goes.
        journal: Journal = self._journal  # type: ignore[assignment]
        fn = handle._fn
        if not isinstance(fn, TaskFunction) or self.tasks.get(fn.name) is not fn:
            raise TypeError(
                f"{self.name} has a journal, so it only takes task functions registered on it "
                f"with @queue.task (a restart finds them again by name); got {fn!r}")
        options = _journal_options(handle._task, fn)
        args, kwargs, handle._args, decoded_kwargs = journal.encode(handle._args,
                                                                    handle._kwargs or {})
        # The task runs with what a restart would read back, from the first run on.
        handle._kwargs = decoded_kwargs or None
        delay = handle._task.delay if handle._task is not None else None
        task_id = uuid.uuid4().hex
        try:
            journal.record_submit(task_id, fn.name, args, kwargs, options,
                                  time.time() + delay if delay else None)
        except JournalError:
            if not self._work.accepting:  # shut down meanwhile: say so, as submit does
                raise self._work.closed_error() from None
            raise
        handle._id = task_id
        try:
            admitted = self._admit(handle, block, timeout)
        except BaseException:
            journal.record_done(task_id)
            raise
        if admitted is not handle:  # a live task holds its key: this one was not queued
            journal.record_done(task_id)
        return admitted

    def _recover(self: Any) -> None:
        # Once, when the queue starts: what the last run left unfinished goes
        # back where it was; dead letters come back as dead letters.
        journal: Journal = self._journal  # type: ignore[assignment]
        wall = time.time()
        try:
            rows = journal.recover()
        except JournalError:
            if not self._work.accepting:
                return  # shut down meanwhile: the rows stay in the file for next time
            raise
        for row in rows:
            fn = self.tasks.get(row.name)
            if row.state == DEAD:
                self._dead.add(self._recovered_letter(row, fn, TaskQueueError(row.error)))
                continue
            try:
                if fn is None:
                    raise JournalError(
                        f"no task function named {row.name!r} is registered; register it "
                        "with @queue.task before the queue starts")
                if row.problem is not None:
                    raise JournalError(f"task {row.id} in {journal.path}: {row.problem}")
                try:
                    handle = self._resumed_handle(row, fn)
                except (TypeError, ValueError) as exc:  # options no Task accepts
                    raise JournalError(f"task {row.id} in {journal.path}: its options "
                                       f"cannot be used ({exc})") from None
            except (TaskQueueError, TypeError, ValueError) as exc:
                letter = self._recovered_letter(row, fn, exc)
                self._dead.add(letter)
                journal.record_dead(row.id, row.attempts, error_text(exc), "", letter.failed_at)
                log.error("journal %s: task %s (%s) cannot be resumed: %s",
                          journal.path, row.name, row.id, exc)
                continue
            try:
                if row.state == SCHEDULED and row.due is not None and row.due > wall:
                    self._admit_delayed(handle, row.due - wall)  # what is left of the wait
                else:
                    self._work.admit(handle, bounded=False)
            except QueueClosed:
                return  # shut down meanwhile: the rest stays in the journal
            self._recovered += 1
            if self._listeners.callbacks:
                self._listeners.emit(EventKind.SUBMITTED, handle)

    def _resumed_handle(self: Any, row: Row, fn: TaskFunction[Any]) -> TaskHandle:
        options = dict(row.options)
        if options.get("backoff") is not None:
            options["backoff"] = Backoff(**options["backoff"])
        task = fn.task(*row.args, **row.kwargs).replace(delay=None, **options)
        handle = self._handle_for(task, (), {})
        handle._id = row.id
        handle._resumed = True
        handle._attempts = row.attempts  # an attempt cut short by the crash counts
        if row.state == RUNNING and row.attempts > handle._policy.retries + CRASHES_FORGIVEN:
            raise TaskQueueError(
                f"task {row.name} ({row.id}) was running when the process stopped, "
                f"{row.attempts} attempts in; it may be what stops the process, so it is "
                "not run again (requeue the dead letter to try once more)")
        if handle._key is not None and self._keys.claim(handle, 0.0) is None:
            self._keys.admitted(handle)
        return handle

    def _recovered_letter(self: Any, row: Row, fn: Optional[TaskFunction[Any]],
                          exc: BaseException) -> DeadLetter:
        args = row.args if isinstance(row.args, (list, tuple)) else [row.args]
        kwargs = row.kwargs if isinstance(row.kwargs, dict) else {}
        name = row.options.get("name") if isinstance(row.options.get("name"), str) else row.name
        return DeadLetter(
            task=Task(fn or _Unregistered(row.name), args, kwargs, name=name),
            task_id=row.id,
            exception=exc,
            traceback=row.traceback or "",
            attempts=row.attempts,
            submitted_at=row.submitted_at,
            failed_at=row.failed_at if row.failed_at is not None else time.time(),
        )

    def _journal_started(self: Any, event: Event) -> None:
        # A listener, so that the worker loop stays as it is: an attempt that
        # is cut short by a crash shows as "running" in the journal.
        handle = event.handle
        if event.kind is EventKind.STARTED and handle._id is not None:
            # A task read back after a restart may be what stopped the
            # process: its start is on disk before it runs, so that one that
            # kills the process at once is still counted (CRASHES_FORGIVEN).
            # Other starts are not waited for: a worker does not wait on the disk.
            self._journal.record_started(handle._id, handle._attempts,  # type: ignore[union-attr]
                                         wait=handle._resumed)
            handle._resumed = False

    def _close_journal(self: Any) -> None:
        if self._journal is not None:
            self._journal.close()


def error_text(exc: BaseException) -> str:
    # "Type: message", for the journal's dead letters; never raises.
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:
        return f"{type(exc).__name__}: <str() failed>"


def _journal_options(task: Optional[Task], fn: TaskFunction[Any]) -> dict:
    # The task's own options as JSON values. Exception classes cannot be
    # written without importing by path on the way back, which a journal
    # must never do: retry_on comes from the registration only.
    if task is None:
        return {}
    if task.retry_on is not None and task.retry_on != fn.task().retry_on:
        raise TypeError(f"retry_on set for one submission of {fn.name!r} cannot be journaled "
                        "(exception classes are not written to the journal); set it in "
                        "@queue.task(retry_on=...)")
    options: dict = {"retries": task.retries, "priority": task.priority,
                     "time_limit": task.time_limit, "key": task.key,
                     "backoff": None if task.backoff is None else dataclasses.asdict(task.backoff)}
    if task.name != fn.name:
        options["name"] = task.name
    return options


class _Unregistered:
    """Stands in, in a dead letter, for a task function no longer registered."""

    def __init__(self, name: str) -> None:
        self.__qualname__ = self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise JournalError(f"no task function named {self.name!r} is registered")
