"""The broker contract (tests/broker_contract.py), run against RedisBroker on a real Redis.

Skips without a Redis server at 127.0.0.1:6379 (fails instead under
TASKQUEUE_REQUIRE_REDIS=1, as CI runs).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterator

import pytest

from broker_contract import BrokerContract, Harness
from conftest import SHARED_REDIS, need_redis
from taskqueue import RedisBroker
from taskqueue.brokers import Broker


class TestRedisBroker(BrokerContract):
    """Workers and producers meet in Redis; due times are Redis's own clock."""

    DELAY = 0.3

    @pytest.fixture(autouse=True)
    def _namespaces(self, namespace: str) -> Iterator[None]:
        self._namespace = namespace
        self._made = itertools.count()
        yield

    def make_broker(self, tmp_path: Path) -> Broker:
        need_redis()
        # Each broker a queue of its own: the namespace fixture empties them all.
        return RedisBroker(SHARED_REDIS, namespace=f"{self._namespace}-{next(self._made)}",
                           visibility_timeout=5)

    def pass_time(self, harness: Harness, seconds: float) -> None:
        """Nothing to move: the next receive waits for Redis's clock."""
