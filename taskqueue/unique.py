"""Unique tasks: at most one task per key that is not yet terminal.

A key is claimed before its task is accepted by the queue, and the claim is
published only once the task is accepted: a second submitter of the same
key meanwhile waits for the outcome, so it is only ever handed a task that
the queue really accepted (never one whose admission then failed). A key
is released only after its holder's handle is done, so that nobody can get
a new handle for the key while the old one still reads as running.
"""

from __future__ import annotations

import threading
from time import monotonic
from typing import Dict, Optional, Set, Union

from .task import TaskHandle
from .validate import wait_seconds

__all__ = ["UniqueKeys", "BUSY"]

BUSY = "busy"
"""What :meth:`UniqueKeys.claim` returns when the key stayed mid-admission too long."""


class UniqueKeys:
    """The handles of keyed tasks that have not ended, by key; thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._by_key: Dict[str, TaskHandle] = {}
        self._admitting: Set[TaskHandle] = set()

    def claim(self, key: str, handle: TaskHandle,
              timeout: Optional[float] = None) -> Union[TaskHandle, str, None]:
        """Make ``handle`` the holder of ``key``, unless a live task holds it.

        While another submission of the same key is being admitted, wait
        (at most ``timeout`` seconds) to learn whether it was.

        Returns:
            None if ``handle`` now holds the key (call :meth:`admitted` or
            :meth:`release` next); the live handle that holds it already; or
            :data:`BUSY` if the other admission did not end within ``timeout``.
        """
        deadline = None if timeout is None else monotonic() + timeout
        with self._cond:
            while True:
                holder = self._by_key.get(key)
                if holder is None or (holder.done() and holder not in self._admitting):
                    self._by_key[key] = handle
                    self._admitting.add(handle)
                    return None
                if holder not in self._admitting:
                    return holder
                remaining = None if deadline is None else deadline - monotonic()
                if remaining is not None and remaining <= 0:
                    return BUSY
                self._cond.wait(None if remaining is None else wait_seconds(remaining))

    def admitted(self, handle: TaskHandle) -> None:
        """The queue accepted ``handle``: other submitters of its key get it from now on."""
        with self._cond:
            self._admitting.discard(handle)
            self._cond.notify_all()

    def release(self, key: str, handle: TaskHandle) -> None:
        """Free ``key``, if ``handle`` holds it (it ended, or was not accepted)."""
        with self._cond:
            self._admitting.discard(handle)
            if self._by_key.get(key) is handle:
                del self._by_key[key]
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._by_key)
