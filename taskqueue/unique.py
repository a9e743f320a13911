"""Unique tasks: at most one task per key that is not yet terminal."""

from __future__ import annotations

import threading
from typing import Dict, Optional

from .task import TaskHandle

__all__ = ["UniqueKeys"]


class UniqueKeys:
    """The handles of keyed tasks that have not ended, by key; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: Dict[str, TaskHandle] = {}

    def claim(self, handle: TaskHandle) -> Optional[TaskHandle]:
        """Make ``handle`` the holder of its key, unless a live task holds it.

        Returns:
            The live handle that holds the key already, or None if ``handle``
            now holds it.
        """
        key = handle._key
        with self._lock:
            holder = self._by_key.get(key)  # type: ignore[arg-type]
            if holder is not None and not holder.done():
                return holder
            self._by_key[key] = handle  # type: ignore[index]
            return None

    def release(self, handle: TaskHandle) -> None:
        """Free ``handle``'s key, if ``handle`` holds it."""
        with self._lock:
            if self._by_key.get(handle._key) is handle:  # type: ignore[arg-type]
                del self._by_key[handle._key]  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._by_key)
