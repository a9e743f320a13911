"""Where tasks wait between submit and their end: the Broker interface and its brokers.

:mod:`~taskqueue.brokers.base` defines :class:`Broker` and :class:`Consumer`;
:mod:`~taskqueue.brokers.memory` is the in-process default,
:mod:`~taskqueue.brokers.journal` the same with a SQLite file behind it, and
:mod:`~taskqueue.brokers.redis` a queue in Redis shared by many processes.
"""

from __future__ import annotations

from .base import Binding, Broker, BrokerCounts, Consumer
from .journal import JournalBroker
from .memory import MemoryBroker
from .redis import RedisBroker

__all__ = ["Broker", "Consumer", "Binding", "BrokerCounts", "MemoryBroker", "JournalBroker",
           "RedisBroker"]
