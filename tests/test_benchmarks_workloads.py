"""The benchmark drivers, baselines and peer adapters, at tiny sizes (never speed)."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

# benchmarks/ is a top-level part of the repository, not an installed
# package: make it importable however pytest was started.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taskqueue import TaskQueue  # noqa: E402

from benchmarks import peers  # noqa: E402
from benchmarks.baselines import BareLoop, bare_loop_throughput, ideal_throughput  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    FailOnce,
    latency,
    pending_memory,
    running,
    streamed,
    submit_cost,
    throughput,
)

FACTORIES = {"ThreadPoolExecutor": lambda: ThreadPoolExecutor(3),
             "TaskQueue": lambda: TaskQueue(workers=3)}


def test_fail_once_fails_once():
    task = FailOnce()
    with pytest.raises(RuntimeError):
        task()
    assert task() is None
    assert FailOnce(fail=False)() is None


@pytest.mark.parametrize("name", FACTORIES)
def test_running_starts_every_worker_before_the_clock(name):
    with running(FACTORIES[name], 3) as executor:
        seen = set()
        barrier = threading.Barrier(3)

        def where():
            barrier.wait(10)
            seen.add(threading.get_ident())

        for future in [executor.submit(where) for _ in range(3)]:
            future.result(10)
        assert len(seen) == 3


@pytest.mark.parametrize("name", FACTORIES)
def test_drivers_return_positive_figures(name):
    make = FACTORIES[name]
    assert throughput(make, 3, [FailOnce(False)] * 20)["throughput"] > 0
    assert submit_cost(make, 3, 50, 10)["submit_us"] > 0
    figures = latency(make, 3, 5, 20)
    assert set(figures) == {"light_p50", "light_p99", "saturated_p50", "saturated_p99"}
    assert all(value > 0 for value in figures.values())
    assert pending_memory(make, 3, 200)["bytes_per_task"] > 0
    assert streamed(make, 3, 50, 8)["us_per_task"] > 0
    assert streamed(make, 3, 20, 8, loops=3)["us_per_task"] > 0


def test_bare_loop_runs_every_call_and_stops():
    calls = []
    lock = threading.Lock()

    def record():
        with lock:
            calls.append(1)

    figures = bare_loop_throughput(2, 100, record)
    assert len(calls) == 100 and figures["throughput"] > 0
    with BareLoop(2) as loop:
        loop.queue.put(record)
        loop.queue.join()
    assert len(calls) == 101


def test_ideal_throughput():
    assert ideal_throughput(8, 0.001) == {"throughput": 8000.0}


# -- peers: what is said when one cannot run -------------------------------------------


class _Absent(peers.Peer):
    name = "Absent"
    distribution = "taskqueue-benchmark-no-such-distribution"


class _Broken(peers.Peer):
    name = "Broken"
    distribution = "pytest"  # installed, so the probe runs

    def throughput(self, workers, tasks):
        raise OSError("no broker here")


class _Stuck(peers.Peer):
    name = "Stuck"
    distribution = "pytest"

    def __init__(self):
        self.release = threading.Event()

    def throughput(self, workers, tasks):
        self.release.wait(30)
        return {"throughput": 1.0}


def test_a_peer_that_is_not_installed_says_how_to_get_it():
    assert _Absent().unavailable() == "not installed (pip install '.[bench]')"


def test_a_peer_that_fails_says_why():
    assert _Broken().unavailable() == "cannot run in-process: OSError: no broker here"


def test_a_peer_that_hangs_is_given_up_on(monkeypatch):
    monkeypatch.setattr(peers, "_PROBE_TIMEOUT", 0.2)
    stuck = _Stuck()
    try:
        assert stuck.unavailable().startswith("cannot run in-process: 20 tasks did not finish")
    finally:
        stuck.release.set()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("peer", peers.PEERS, ids=lambda p: p.name)
def test_an_installed_peer_runs_in_process(peer):
    if peers.version_of(peer.distribution) is None:
        pytest.skip(f"{peer.name} is not installed (it comes with the bench extra)")
    assert peer.unavailable() is None
    assert peer.throughput(workers=2, tasks=50)["throughput"] > 0
