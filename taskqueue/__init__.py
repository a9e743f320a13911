"""taskqueue: background work for synchronous Python services.

A bounded ``queue.Queue`` drained by a fixed pool of daemon worker threads,
with retries and backoff, dead letters, events and stats. Standard library
only. Quick start::

    from taskqueue import TaskQueue

    with TaskQueue(workers=4, retries=3) as queue:
        handle = queue.submit(send_confirmation, booking_id)
    handle.result()
"""

from __future__ import annotations

import logging as _logging

from .brokers import Broker, JournalBroker, MemoryBroker, RedisBroker
from .deadletter import DeadLetter
from .errors import (BrokerError, JournalError, JournalLocked, QueueBroken, QueueClosed,
                     QueueFull, Retry, TaskFailed, TaskQueueError, TimeLimitExceeded)
from .events import Event, EventKind
from .journal import Journal
from .journalview import JournalView
from .periodic import Periodic
from .pool import TaskQueue
from .registry import TaskFunction
from .retry import Backoff
from .stats import Stats
from .status import Overview, ProcessInfo, TaskInfo
from .task import Task, TaskHandle, TaskState

__version__ = "0.1.0"

# A library only ever adds a NullHandler: where the records go is the
# application's choice (the CLI and the tests configure logging, nothing else).
_logging.getLogger("taskqueue").addHandler(_logging.NullHandler())

__all__ = [
    # Queue
    "TaskQueue",
    # Tasks
    "Task",
    "TaskHandle",
    "TaskState",
    "TaskFunction",
    "Periodic",
    # Retries
    "Backoff",
    "Retry",
    # Observing
    "Stats",
    "TaskInfo",
    "Overview",
    "ProcessInfo",
    "DeadLetter",
    "Event",
    "EventKind",
    # Errors
    "TaskQueueError",
    "QueueFull",
    "QueueClosed",
    "QueueBroken",
    "TaskFailed",
    "BrokerError",
    "TimeLimitExceeded",
    # Brokers
    "Broker",
    "MemoryBroker",
    "JournalBroker",
    "RedisBroker",
    # Journal
    "Journal",
    "JournalView",
    "JournalError",
    "JournalLocked",
]
