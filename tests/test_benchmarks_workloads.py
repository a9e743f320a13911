"""The benchmark drivers, baselines and peer adapters, at tiny sizes (never speed)."""

from __future__ import annotations

import sqlite3
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
from benchmarks.baselines import (  # noqa: E402
    BareLoop,
    GroupCommitLoop,
    MinimalPool,
    bare_loop_throughput,
    group_commit_throughput,
    ideal_throughput,
)
from benchmarks.workloads import (  # noqa: E402
    FailOnce,
    Tally,
    concurrent_throughput,
    journaled_throughput,
    latency,
    pending_memory,
    running,
    shares,
    streamed,
    submit_cost,
    throughput,
)

# Generous: a bug fails the test instead of hanging it, a slow machine does not.
WAIT = 20.0

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


def test_minimal_pool_hands_back_every_result_and_error_and_stops():
    pool = MinimalPool(2)
    handles = [pool.submit(pow, 2, n) for n in range(50)]
    failing = pool.submit(int, "not a number")
    assert [handle.result(WAIT) for handle in handles] == [2 ** n for n in range(50)]
    with pytest.raises(ValueError):
        failing.result(WAIT)
    pool.shutdown()
    assert not [t for t in threading.enumerate() if t.name.startswith("minimal-pool-")]


def test_tally_releases_its_waiter_at_the_count_and_says_how_far_it_got():
    tally = Tally("rows ran")
    adders = [threading.Thread(target=lambda: [tally.add() for _ in range(25)]) for _ in range(4)]
    for thread in adders:
        thread.start()
    tally.wait_for(100, WAIT)
    for thread in adders:
        thread.join(WAIT)
    with pytest.raises(TimeoutError, match="100 of 101 rows ran"):
        tally.wait_for(101, 0.01)


def test_ideal_throughput():
    assert ideal_throughput(8, 0.001) == {"throughput": 8000.0}


# -- the durable-journal scenario: producers, taskqueue's journal, the raw loop ---------


def test_shares_are_as_even_as_can_be():
    assert shares(10, 4) == [3, 3, 2, 2]
    assert shares(8, 8) == [1] * 8
    assert shares(2, 4) == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="producers must be >= 1, got 0"):
        shares(10, 0)
    with pytest.raises(ValueError, match="tasks must be >= 0, got -1"):
        shares(-1, 2)


def test_concurrent_throughput_submits_every_task_from_every_producer():
    lock = threading.Lock()
    submitters = []

    def submit():
        with lock:
            submitters.append(threading.get_ident())
            return len(submitters)

    awaited = []
    figures = concurrent_throughput(3, 10, submit, awaited.extend)
    assert sorted(awaited) == list(range(1, 11))  # everything submit returned, once
    assert len(set(submitters)) == 3 and threading.get_ident() not in submitters
    assert figures["throughput"] > 0 and figures["seconds"] > 0


def test_concurrent_throughput_raises_what_a_producer_raised():
    def submit():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        concurrent_throughput(2, 4, submit, lambda _: None)


@pytest.mark.parametrize("durability", ["normal", "full", None])
def test_journaled_throughput_runs_with_and_without_a_journal(durability):
    figures = journaled_throughput(2, 3, 30, durability=durability)
    assert figures["throughput"] > 0


def test_group_commit_loop_commits_each_row_before_put_returns_and_runs_every_one(tmp_path):
    # Given workers held inside their first tasks, so that no row can finish
    path = str(tmp_path / "loop.db")
    release = threading.Event()
    calls = []
    lock = threading.Lock()

    def task():
        with lock:
            calls.append(1)
        assert release.wait(WAIT)

    with GroupCommitLoop(path, 2) as loop:
        # When five rows are put
        for _ in range(5):
            loop.put(task)
        # Then all five are in the file for another reader, committed
        reader = sqlite3.connect(path)
        try:
            assert reader.execute("SELECT count(*) FROM tasks").fetchone()[0] == 5
        finally:
            reader.close()
        release.set()
        loop.wait_run(5, timeout=WAIT)
    # And every row ran once, and the finished rows were deleted at exit
    assert len(calls) == 5
    check = sqlite3.connect(path)
    try:
        assert check.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0
    finally:
        check.close()


def test_group_commit_loop_says_when_rows_did_not_run_in_time(tmp_path):
    with GroupCommitLoop(str(tmp_path / "loop.db"), 1) as loop:
        with pytest.raises(TimeoutError, match="0 of 1 rows ran"):
            loop.wait_run(1, timeout=0.01)


def test_group_commit_throughput_runs_every_task():
    calls = []
    lock = threading.Lock()

    def record():
        with lock:
            calls.append(1)

    figures = group_commit_throughput(2, 3, 40, record)
    assert len(calls) == 2 + 40  # the warm-up rows, then the measured ones
    assert figures["throughput"] > 0


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


@pytest.mark.parametrize("peer", peers.JOURNAL_PEERS, ids=lambda p: p.name)
def test_a_durable_peer_that_is_not_installed_says_how_to_get_it(peer):
    # The distribution a peer names is the seam: one that is not there is
    # reported before anything is imported.
    absent = type(f"Absent{type(peer).__name__}", (type(peer),),
                  {"distribution": "taskqueue-benchmark-no-such-distribution"})()
    assert absent.unavailable() == "not installed (pip install '.[bench]')"


@pytest.mark.parametrize("peer, module", [(peers.PersistQueue(), "persistqueue"),
                                          (peers.SqliteHuey(), "huey")],
                         ids=["persist-queue", "SqliteHuey"])
def test_a_durable_peer_that_cannot_be_imported_says_why(peer, module, monkeypatch):
    if peers.version_of(peer.distribution) is None:
        pytest.skip(f"{peer.name} is not installed, so its import is never tried")
    # A None in sys.modules is how Python itself spells "this import fails".
    monkeypatch.setitem(sys.modules, module, None)
    reason = peer.unavailable()
    assert reason.startswith("cannot run in-process: ModuleNotFoundError")
    assert module in reason


@pytest.mark.timeout(120)
@pytest.mark.parametrize("peer", peers.JOURNAL_PEERS, ids=lambda p: p.name)
def test_an_installed_durable_peer_runs_with_several_producers(peer):
    if peers.version_of(peer.distribution) is None:
        pytest.skip(f"{peer.name} is not installed (it comes with the bench extra)")
    assert peer.unavailable() is None
    assert peer.throughput(workers=2, tasks=30, producers=3)["throughput"] > 0


def test_the_durable_peers_notes_say_what_sqlite_syncs():
    default = peers.sqlite_default_synchronous()
    assert default in {"OFF", "NORMAL", "FULL", "EXTRA"}
    for peer in peers.JOURNAL_PEERS:
        assert f"synchronous={default}" in peer.setup
