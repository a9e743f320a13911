"""The Broker interface: the one owner of a task between submit and its end.

A :class:`Broker` holds every :class:`~taskqueue.message.Message` of one
queue from the moment ``submit`` hands it over until the task is terminal:
it takes messages in with backpressure, hands each to one worker (through a
:class:`Consumer`), keeps retries and delays until they are due, keeps dead
letters, takes back what has not started when it is cancelled, and counts
what ``stats()`` reports. The queue (:mod:`taskqueue.pool`) validates and
builds messages and runs the lifecycle; the worker runs attempts;
:mod:`taskqueue.settle` decides what each outcome means and calls the
broker's steps below in one order. Nothing else touches a message.

The steps, in the order settle calls them for each outcome::

    succeeded:  consumer.succeeded(m, result)  -> event -> consumer.ack(m)
    failed:     consumer.failed(m, letter)     -> event -> consumer.ack(m)
    retry:      consumer.retrying(m, delay)    -> event -> consumer.reschedule(m, delay)
    cancelled:  broker.withdraw(handle), broker.cancelled(m) -> event -> broker.ack(m)

``succeeded``, ``failed``, ``retrying`` and ``cancelled`` record the
outcome where the broker keeps things, resolve the task's handle and free
its unique key, in that order (the key stays taken until the handle is
done); ``ack`` is the last step, after which the task no longer counts as
unfinished for ``join()``. Events come between, so that a listener has run
before ``join()`` can return.

Two brokers live in this package: :class:`~taskqueue.brokers.memory.MemoryBroker`
(the default, in this process) and
:class:`~taskqueue.brokers.journal.JournalBroker` (the same, with every
unfinished task kept in a SQLite file). The README's "Writing a broker"
section says what each method promises; the contract suite in
``tests/broker_contract.py`` checks it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import (TYPE_CHECKING, Any, Callable, ClassVar, FrozenSet, List, Optional, Tuple)

from ..status import Overview

if TYPE_CHECKING:
    import threading

    from ..deadletter import DeadLetter
    from ..errors import QueueClosed
    from ..message import Message
    from ..stats import WorkerTally
    from ..status import TaskInfo
    from ..task import Task, TaskHandle

__all__ = ["Broker", "Consumer", "Binding", "BrokerCounts", "Wait"]

Wait = Callable[["threading.Condition", Optional[float]], object]
"""How a broker's timer waits: ``wait(condition, timeout)``, called with the
condition held, returns when notified or when ``timeout`` seconds of the
queue's clock have passed (``None``: until notified). ``Condition.wait``
itself by default; a fake clock's in tests."""

Callbacks = List[Callable[[Any], object]]


@dataclass(frozen=True)
class Binding:
    """What a broker is told by the queue that owns it (see :meth:`Broker.bind`)."""

    name: str
    """The queue's name, for thread names and messages."""
    maxsize: int
    """How many messages may wait to run before ``enqueue`` blocks; 0: no bound."""
    dead_letter_limit: int
    """How many dead letters to keep (oldest dropped, and counted)."""
    clock: Callable[[], float]
    """The queue's monotonic clock: due times and timings are on it."""
    wait: Wait
    """How the broker's timer waits on that clock."""
    exempt: Callable[[], bool]
    """Whether the calling thread may pass the bound (one of the queue's own workers)."""
    lookup: Callable[[str], Optional[Callable[..., Any]]]
    """The task function registered under a name, or None: for messages read back by name."""
    message_for: Callable[["Task"], "Message"]
    """Builds a message and its handle from a Task, as ``submit`` does (queue defaults applied)."""
    history: int = 10_000
    """How many finished tasks' statuses to keep (0: none); see :meth:`Broker.task_status`."""
    workers: Callable[[], int] = lambda: 0
    """How many worker threads the queue runs in this process (for those watching it)."""


@dataclass(frozen=True)
class BrokerCounts:
    """What a broker knows of the queue's totals; None where the workers' tallies tell."""

    submitted: int
    """Tasks accepted (a retry or requeue of the same task not counted again)."""
    cancelled: int
    """Tasks cancelled before an attempt started."""
    dead_letters: int
    """Dead letters held now."""
    dead_letters_dropped: int
    """Dead letters discarded to stay within the limit."""
    succeeded: Optional[int] = None
    """Tasks that succeeded, where the broker counts them (across processes)."""
    failed: Optional[int] = None
    """Tasks that failed for good, where the broker counts them."""
    retried: Optional[int] = None
    """Attempts run again after a failure, where the broker counts them."""
    running: Optional[int] = None
    """Attempts running now, where the broker counts them."""
    scheduled: int = 0
    """Tasks waiting for a due time (a delay or a backoff): part of the pending ones."""


class Consumer(abc.ABC):
    """One worker thread's side of a broker: what it receives and how it reports.

    Made by :meth:`Broker.consumer`, used by one worker thread only (and,
    once that thread is abandoned or has died, by whoever settles for it).
    """

    tally: WorkerTally
    """The counters this consumer's worker writes."""
    current: Optional[Message]
    """The message it holds: started and not yet acknowledged or handed back."""

    @abc.abstractmethod
    def receive(self) -> Optional[Message]:
        """Wait for the next message and begin its attempt; None once consumers are stopped.

        The task is RUNNING and the message :attr:`current` when this
        returns it. Messages come highest priority first, and in submission
        order within one priority; one cancelled while it waited is skipped.
        """

    @abc.abstractmethod
    def resume(self, message: Message) -> bool:
        """Begin the next attempt of a retry this consumer kept (see :meth:`reschedule`).

        Returns:
            False if it will not run: cancelled meanwhile, or the broker is
            sealed (then it is cancelled here).
        """

    @abc.abstractmethod
    def succeeded(self, message: Message, result: Any) -> None:
        """The attempt returned: record it, resolve the handle, free the key."""

    @abc.abstractmethod
    def failed(self, message: Message, letter: DeadLetter) -> None:
        """The task failed for good: keep ``letter``, resolve the handle, free the key."""

    @abc.abstractmethod
    def retrying(self, message: Message, delay: float) -> None:
        """The attempt failed and another is due in ``delay`` seconds: record it,
        and move the handle back to waiting (SCHEDULED if ``delay`` > 0)."""

    @abc.abstractmethod
    def reschedule(self, message: Message, delay: float) -> Optional[Message]:
        """Hold a retrying message until it is due, and hand it back from this consumer.

        Returns:
            ``message`` itself if this consumer is to run it next (a retry
            due at once, with nothing more urgent waiting); None otherwise.
        """

    @abc.abstractmethod
    def ack(self, message: Message) -> None:
        """The last step of a terminal task held by this consumer."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Make the acknowledgements this consumer made count now.

        A consumer may hold them back until its next :meth:`receive` (the
        in-memory one pays them with its next get); a worker that will not
        receive again, and a test driving a consumer by hand, flush.
        """

    @abc.abstractmethod
    def crashed(self) -> None:
        """This consumer's worker died: flush, and put back what it held, so nothing is lost."""


class Broker(abc.ABC):
    """The one owner of a queue's messages, from submit to their terminal state.

    Methods may be called from any thread unless they say otherwise.
    """

    shared: ClassVar[bool] = False
    """True if the queue lives outside this process (consumers elsewhere)."""
    blocking_submit: ClassVar[bool] = False
    """True if :meth:`enqueue` waits on I/O: ``asubmit`` then runs it in a thread."""

    @abc.abstractmethod
    def bind(self, binding: Binding) -> None:
        """Become the broker of one queue; called once, before anything else.

        Raises:
            RuntimeError: the broker is bound to a queue already.
        """

    def open(self) -> None:
        """Get ready to take messages in (a shared broker's producer side); by default nothing.

        Called before the first ``enqueue``, whether or not this process consumes.
        """

    @abc.abstractmethod
    def start(self) -> None:
        """Start consuming: what the broker runs for its consumers (its timer).

        Called when the queue starts its workers, before any consumer receives.
        """

    @abc.abstractmethod
    def enqueue(self, message: Message, block: bool = True,
                timeout: Optional[float] = None) -> TaskHandle:
        """Take a new message in: queued, or held until ``message.due``.

        Waits for room while the queue is full, unless ``block`` is false or
        the calling thread is exempt. A message with a ``key`` held by a
        live task is not taken: the holder's handle is returned instead.

        Returns:
            The handle the submitter gets: ``message.handle``, or the holder's.

        Raises:
            QueueFull: no room within ``timeout`` (at once without ``block``).
            QueueClosed: the broker is closed; nothing was taken.
        """

    @abc.abstractmethod
    def when_room(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` once there may be room (at once if there is, or if closed)."""

    @abc.abstractmethod
    def consumer(self, tally: WorkerTally) -> Consumer:
        """Return a new consumer for one worker thread, counting into ``tally``."""

    @abc.abstractmethod
    def withdraw(self, handle: TaskHandle) -> Optional[Tuple[Message, Callbacks]]:
        """Take back a task that has not started, so that it never will.

        Returns:
            Its message and the done callbacks still to run, or None if it
            had started or ended.
        """

    @abc.abstractmethod
    def cancelled(self, message: Message) -> None:
        """Record that a withdrawn message is cancelled, count it and free its key."""

    @abc.abstractmethod
    def ack(self, message: Message) -> None:
        """The last step of a terminal task that no consumer holds (a cancelled one)."""

    @abc.abstractmethod
    def seal(self) -> List[Message]:
        """Close, refuse re-entry of accepted work too, and take out every
        message that has not started (queued, or waiting for a due time).

        Returns:
            The messages taken out, for the queue to cancel.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Refuse new messages from now on (``enqueue`` raises QueueClosed); wake waiters."""

    @property
    @abc.abstractmethod
    def accepting(self) -> bool:
        """Whether :meth:`enqueue` takes new messages."""

    @abc.abstractmethod
    def wait_idle(self, timeout: Optional[float]) -> bool:
        """Wait until every message taken in is acknowledged; False if ``timeout`` passed."""

    @abc.abstractmethod
    def stop_consumers(self) -> None:
        """Make every consumer's :meth:`Consumer.receive` return None once nothing is queued."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Stop the broker's own threads and let go of what it holds open; idempotent.

        Called once no consumer runs any more (or will not be waited for).
        """

    @abc.abstractmethod
    def recover(self) -> List[TaskHandle]:
        """Take back what a previous run left unfinished (a durable broker); at start.

        Returns:
            The handles of the tasks taken back (none for a broker that keeps nothing).
        """

    @abc.abstractmethod
    def dead_letters(self) -> List[DeadLetter]:
        """Return the dead letters held, oldest first."""

    @abc.abstractmethod
    def requeue(self, letter: DeadLetter, message: Message, *, block: bool = True,
                timeout: Optional[float] = None) -> TaskHandle:
        """Forget ``letter`` and take ``message`` (its task, anew) in its place, at once.

        Raises:
            ValueError: ``letter`` is not held (requeued or purged already):
                nothing is taken in.
            QueueFull, QueueClosed: as :meth:`enqueue`; the letter is kept.
        """

    @abc.abstractmethod
    def purge_dead(self) -> int:
        """Forget every dead letter; return how many."""

    @abc.abstractmethod
    def counts(self) -> BrokerCounts:
        """Return the totals the broker keeps."""

    @abc.abstractmethod
    def closed_error(self) -> QueueClosed:
        """Return the error a producer gets once the broker is closed."""

    def task_status(self, task_id: str) -> Optional[TaskInfo]:
        """The status of task ``task_id``: live, or finished and still remembered.

        A broker keeps the statuses of the most recent ``Binding.history``
        finished tasks; None means it has never seen the id, or has
        forgotten it (never "pending" for an unknown id). By default a
        broker remembers nothing: None.
        """
        return None

    def cancel_task(self, task_id: str) -> bool:
        """Cancel task ``task_id`` if it has not started: :meth:`TaskHandle.cancel` by id.

        Returns:
            True if it is cancelled now (or was already), False if it has
            started, ended, or is unknown here. By default nothing is known: False.
        """
        return False

    def overview(self, limit: int) -> Overview:
        """What waits and runs now: pending by priority, scheduled and running tasks.

        Args:
            limit: at most this many tasks in each list.

        By default a broker shows nothing (an empty :class:`Overview`).
        """
        return Overview(pending_by_priority={}, scheduled=[], running=[])

    def submitted_here(self) -> int:
        """How many tasks this process has taken in (the interpreter-exit drain's measure)."""
        return self.counts().submitted

    def claim_tick(self, name: str, tick: int, interval: float) -> bool:
        """Whether this process fires tick ``tick`` of the periodic task ``name``.

        Asked only of a shared broker, whose processes each run the same
        ``every()``: one of them must win each tick. By default every
        process fires (a broker that is not shared has one).
        """
        return True

    def threads(self) -> FrozenSet[threading.Thread]:
        """The threads the broker runs itself (a timer, a writer): none by default."""
        return frozenset()

    def disown_after_fork(self) -> None:
        """In a forked child: let go of what belongs to the parent, touching no lock."""
