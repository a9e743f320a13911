"""The stdlib baselines taskqueue is measured against.

``ThreadPoolExecutor`` is what most users would otherwise reach for; the
bare loop (a ``queue.Queue`` and threads doing get / call / task_done, no
futures, no results) is the practical limit of a thread pool in CPython:
nothing that hands out a result per task can be cheaper.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter
from typing import Callable, Dict, List, Optional

from .workloads import ExecutorFactory, noop

__all__ = ["thread_pool", "BareLoop", "bare_loop_throughput", "ideal_throughput"]


def thread_pool(workers: int) -> ExecutorFactory:
    """Return a factory of ``ThreadPoolExecutor(workers)``, the stdlib's pool."""
    return lambda: ThreadPoolExecutor(workers)


class BareLoop:
    """A bounded ``queue.Queue`` drained by threads that get, call and task_done.

    Args:
        workers: how many threads.
        maxsize: the queue's bound (1024, as taskqueue's default).
    """

    _STOP = object()

    def __init__(self, workers: int, maxsize: int = 1024) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)  # type: ignore[type-arg]
        self._threads: List[threading.Thread] = [
            threading.Thread(target=self._work, name=f"bare-loop-{i}", daemon=True)
            for i in range(workers)
        ]

    def __enter__(self) -> BareLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for _ in self._threads:
            self.queue.put(self._STOP)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        get, done, stop = self.queue.get, self.queue.task_done, self._STOP
        while True:
            fn = get()
            if fn is stop:
                done()
                return
            fn()
            done()


def bare_loop_throughput(workers: int, tasks: int, fn: Optional[Callable[[], object]] = None,
                         maxsize: int = 1024) -> Dict[str, float]:
    """Put ``tasks`` calls through a :class:`BareLoop` and wait for all; return tasks/s."""
    call = fn or noop
    with BareLoop(workers, maxsize) as loop:
        put = loop.queue.put
        start = perf_counter()
        for _ in range(tasks):
            put(call)
        loop.queue.join()
        elapsed = perf_counter() - start
    return {"throughput": tasks / elapsed, "seconds": elapsed}


def ideal_throughput(workers: int, seconds_per_task: float) -> Dict[str, float]:
    """Return the throughput of ``workers`` that each finish a task every ``seconds_per_task``."""
    return {"throughput": workers / seconds_per_task}
