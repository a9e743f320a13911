"""The broker contract (tests/broker_contract.py), run against each broker of the package."""

from __future__ import annotations

from pathlib import Path

from broker_contract import BrokerContract
from taskqueue import JournalBroker, MemoryBroker
from taskqueue.brokers import Broker
from taskqueue.journal import Journal


class TestMemoryBroker(BrokerContract):
    """The in-process default."""

    def make_broker(self, tmp_path: Path) -> Broker:
        return MemoryBroker()


class TestJournalBroker(BrokerContract):
    """The in-process broker with a SQLite journal behind it."""

    def make_broker(self, tmp_path: Path) -> Broker:
        tmp_path.mkdir(parents=True, exist_ok=True)
        return JournalBroker(Journal(tmp_path / "journal.db"))
