"""Events about tasks, and their fan-out to listeners.

A listener is any callable taking one :class:`Event`. Listeners run in the
thread where the event happens (the producer for ``submitted``, a worker for
the rest), so they should be quick. One that raises is logged and skipped;
it never breaks a worker or a submit.
"""

from __future__ import annotations

import enum
import logging
import threading
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional, Tuple

if TYPE_CHECKING:
    from .task import TaskHandle

__all__ = ["Event", "EventKind", "Listener", "Listeners"]

log = logging.getLogger(__name__)


class EventKind(enum.Enum):
    """What happened to a task."""

    SUBMITTED = "submitted"
    """The task was accepted, emitted by the submitting thread right after.

    A worker may start the task at once, so a listener can see its
    ``started`` (from the worker's thread) before its ``submitted``."""
    STARTED = "started"
    """An attempt started on a worker."""
    SUCCEEDED = "succeeded"
    """The task ended with a result."""
    RETRYING = "retrying"
    """An attempt failed and another one is on its way; ``exception`` says why."""
    FAILED = "failed"
    """The task ended in failure; ``exception`` is the final error."""
    CANCELLED = "cancelled"
    """The task was cancelled before an attempt started."""


class Event(NamedTuple):
    """One thing that happened to one task."""

    kind: EventKind
    """What happened."""
    handle: "TaskHandle"
    """The task's handle."""
    exception: Optional[BaseException] = None
    """The error, for ``retrying`` and ``failed``; None otherwise."""
    seconds: Optional[float] = None
    """For ``started``, how long this attempt waited in the queue; for
    ``succeeded``, ``failed`` and ``retrying``, how long the attempt ran (None
    for a task failed without an attempt); None for ``submitted`` and ``cancelled``."""


Listener = Callable[[Event], object]
_new_event = tuple.__new__


class Listeners:
    """A set of listeners that can be added to from any thread.

    The tuple of listeners is replaced, never changed in place, so emitting
    reads it without a lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.callbacks: Tuple[Listener, ...] = ()
        """The listeners now registered; empty means nobody listens."""

    def add(self, callback: Listener) -> None:
        """Register ``callback``; it gets every event from now on.

        Raises:
            TypeError: ``callback`` is not callable.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        with self._lock:
            self.callbacks = self.callbacks + (callback,)

    def remove(self, callback: Listener) -> None:
        """Unregister ``callback``.

        Raises:
            ValueError: ``callback`` is not registered.
        """
        with self._lock:
            callbacks = list(self.callbacks)
            try:
                callbacks.remove(callback)
            except ValueError:
                raise ValueError(f"callback {callback!r} is not a listener") from None
            self.callbacks = tuple(callbacks)

    def emit(self, kind: EventKind, handle: "TaskHandle",
             exception: Optional[BaseException] = None,
             seconds: Optional[float] = None) -> None:
        """Send one event to every listener, logging any that raises."""
        # tuple.__new__ skips the NamedTuple's Python-level __new__: this runs
        # up to three times per task while anyone listens.
        event = _new_event(Event, (kind, handle, exception, seconds))
        for callback in self.callbacks:
            try:
                callback(event)
            except BaseException:  # even SystemExit: a listener must not kill a worker
                log.exception("listener %r raised on %s of %r", callback, kind.value, handle)
