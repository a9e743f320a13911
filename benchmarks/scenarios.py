"""The scenarios: each one small function, registered with ``@scenario``.

To add a scenario, write one function here that takes a
:class:`~benchmarks.registry.Context`, measures its contenders with
``ctx.measure`` and returns its rows with ``ctx.compare``; decorate it with
its name, title and sizes per mode. Nothing else needs to change: the CLI,
the table, the JSON and ``--only`` all read the registry.

taskqueue runs with its defaults unless the scenario says otherwise. The
sizes of each mode are recorded in every row of the JSON.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Optional

from taskqueue import Backoff, TaskQueue
from taskqueue.workqueue import WorkQueue

from .baselines import (
    MinimalPool,
    bare_loop_throughput,
    group_commit_throughput,
    ideal_throughput,
    thread_pool,
)
from .harness import Metric, Result, Samples, Target
from .peers import JOURNAL_PEERS, PEERS, Peer, version_of
from .redis_peers import (
    REDIS_PEERS,
    DramatiqOnRedis,
    RawLoop,
    TaskQueueOnRedis,
    redis_peers,
    redis_unreachable,
    redis_url,
)
from .registry import Context, scenario
from .workloads import (
    FailOnce,
    FifoTaskQueue,
    FifoWorkQueue,
    journaled_throughput,
    latency,
    noop,
    pending_memory,
    queue_cycle,
    sleep_1ms,
    streamed,
    submit_cost,
    throughput,
)

__all__: List[str] = []  # everything here is reached through the registry

THROUGHPUT = Metric("throughput", "throughput", "tasks/s", higher_is_better=True)
SUBMIT_COST = Metric("submit_us", "submit() cost", "us/call", higher_is_better=False)
MEMORY = Metric("bytes_per_task", "memory per pending task", "bytes", higher_is_better=False)
ROUND_TRIPS = Metric("round_trips", "round trips to Redis per task", "trips/task",
                     higher_is_better=False)
ONE_ROUND_TRIP = "1 round trip per task"

TASKQUEUE = "taskqueue"


def _tpe(workers: int) -> str:
    return f"ThreadPoolExecutor({workers})"


def _queue(workers: int, **options: object) -> Callable[[], TaskQueue]:
    return lambda: TaskQueue(workers=workers, **options)  # type: ignore[arg-type]


@scenario("noop", "1. No-op throughput, 4 workers, a handle per task, every result awaited",
          full={"tasks": 100_000, "workers": 4},
          quick={"tasks": 20_000, "workers": 4},
          smoke={"tasks": 300, "workers": 4})
def noop_throughput(ctx: Context) -> List[Result]:
    tasks, workers = ctx.sizes["tasks"], ctx.sizes["workers"]
    bare, minimal = f"bare loop, {workers} threads", f"minimal pool, {workers} threads"
    samples = ctx.measure({
        _tpe(workers): lambda: throughput(thread_pool(workers), workers, [noop] * tasks),
        bare: lambda: bare_loop_throughput(workers, tasks),
        minimal: lambda: throughput(lambda: MinimalPool(workers), workers, [noop] * tasks),
        TASKQUEUE: lambda: throughput(_queue(workers), workers, [noop] * tasks),
    })
    return [
        ctx.compare(samples, THROUGHPUT, _tpe(workers), target=Target.at_least(2.0)),
        ctx.compare(samples, THROUGHPUT, bare, target=Target.at_least(0.5),
                    note="bare loop: queue.Queue(maxsize=1024) + threads doing "
                         "get / call / task_done; no futures, no results"),
        # No target: the floor of a pool that hands out a handle per task.
        ctx.compare(samples, THROUGHPUT, minimal,
                    note="minimal pool: taskqueue's handle on a plain queue.Queue(maxsize=1024), "
                         "threads doing get / run / task_done, every result awaited; no "
                         "stats, retries, listeners or priorities"),
    ]


@scenario("producer", "2. Producer cost: microseconds per submit() while workers keep up",
          full={"tasks": 50_000, "burst": 100, "workers": 4},
          quick={"tasks": 20_000, "burst": 100, "workers": 4},
          smoke={"tasks": 500, "burst": 100, "workers": 4})
def producer_cost(ctx: Context) -> List[Result]:
    tasks, burst, workers = ctx.sizes["tasks"], ctx.sizes["burst"], ctx.sizes["workers"]
    samples = ctx.measure({
        _tpe(workers): lambda: submit_cost(thread_pool(workers), workers, tasks, burst),
        TASKQUEUE: lambda: submit_cost(_queue(workers), workers, tasks, burst),
    })
    return [ctx.compare(samples, SUBMIT_COST, _tpe(workers), target=Target.at_most(1.0))]


@scenario("io-scaling", "3. I/O-bound scaling: tasks sleeping 1 ms, throughput against workers / 1 ms",
          full={"tasks": 2_000, "workers": [1, 2, 4, 8, 16, 32, 64]},
          quick={"tasks": 300, "workers": [1, 2, 4, 8, 16, 32, 64]},
          smoke={"tasks": 40, "workers": [1, 4, 64]})
def io_scaling(ctx: Context) -> List[Result]:
    slept = _measured_sleep()
    note = (f"ideal = workers / 1 ms; time.sleep(0.001) itself takes {slept * 1e3:.3f} ms "
            f"here (median of 200), so no pool can pass {0.001 / slept:.2f}x of ideal")
    rows: List[Result] = []
    for workers in ctx.sizes["workers"]:
        rows += _io_rows(ctx, workers, ctx.sizes["tasks"], slept, note if not rows else None)
    return rows


def _io_rows(ctx: Context, workers: int, tasks: int, slept: float,
             note: Optional[str]) -> List[Result]:
    ideal = f"ideal ({workers} / 1 ms)"
    bare = f"bare loop, {workers} threads"
    samples = ctx.measure({
        ideal: lambda: ideal_throughput(workers, 0.001),
        _tpe(workers): lambda: throughput(thread_pool(workers), workers, [sleep_1ms] * tasks),
        bare: lambda: bare_loop_throughput(workers, tasks, sleep_1ms),
        TASKQUEUE: lambda: throughput(_queue(workers), workers, [sleep_1ms] * tasks),
    }, label=f"workers={workers}", warmup=0)
    metric = Metric("throughput", f"throughput, {workers} worker{'s' if workers > 1 else ''}",
                    "tasks/s", True)
    return [
        ctx.compare(samples, metric, ideal, workers=workers, note=note,
                    target=Target.at_least(0.9) if workers <= 32 else None,
                    sleep_measured_ms=round(slept * 1e3, 4)),
        ctx.compare(samples, metric, _tpe(workers), workers=workers, target=Target.at_least(1.0)),
        # No target: the bare loop shows what any pool can reach on this machine.
        ctx.compare(samples, metric, bare, workers=workers),
    ]


def _measured_sleep() -> float:
    times = []
    for _ in range(200):
        start = time.perf_counter()
        time.sleep(0.001)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@scenario("latency", "4. Latency, submit -> start, light load (one task in flight) and saturation",
          full={"light_tasks": 5_000, "saturated_tasks": 20_000, "workers": 4},
          quick={"light_tasks": 1_000, "saturated_tasks": 5_000, "workers": 4},
          smoke={"light_tasks": 50, "saturated_tasks": 200, "workers": 4})
def submit_to_start(ctx: Context) -> List[Result]:
    light, saturated, workers = (ctx.sizes["light_tasks"], ctx.sizes["saturated_tasks"],
                                 ctx.sizes["workers"])
    samples = ctx.measure({
        _tpe(workers): lambda: latency(thread_pool(workers), workers, light, saturated),
        TASKQUEUE: lambda: latency(_queue(workers), workers, light, saturated),
    })
    rows = []
    for key, label, target in (
        ("light_p50", "p50, light load", None),
        ("light_p99", "p99, light load", Target.at_most(1.0)),
        ("saturated_p50", "p50, saturated", None),
        ("saturated_p99", "p99, saturated", None),
    ):
        note = None
        if key == "saturated_p50":
            note = ("saturated: ThreadPoolExecutor's queue is unbounded, taskqueue's holds 1024 "
                    "and the producer waits for room (that wait counts as latency)")
        rows.append(ctx.compare(samples, Metric(key, label, "us", False), _tpe(workers),
                                target=target, note=note))
    return rows


@scenario("memory", "5. Memory per pending task (tracemalloc), workers blocked",
          full={"tasks": 200_000, "workers": 4, "maxsize": 300_000},
          quick={"tasks": 10_000, "workers": 4, "maxsize": 300_000},
          smoke={"tasks": 1_000, "workers": 4, "maxsize": 300_000})
def memory_per_pending_task(ctx: Context) -> List[Result]:
    tasks, workers, maxsize = ctx.sizes["tasks"], ctx.sizes["workers"], ctx.sizes["maxsize"]
    samples = ctx.measure({
        _tpe(workers): lambda: pending_memory(thread_pool(workers), workers, tasks),
        TASKQUEUE: lambda: pending_memory(_queue(workers, maxsize=maxsize), workers, tasks),
    }, warmup=0)
    return [ctx.compare(samples, MEMORY, _tpe(workers), target=Target.at_most(0.5))]


@scenario("growth", "6. Cost per task as the work grows, streamed through the bounded queue",
          full={"tasks": [10**3, 10**4, 10**5, 10**6], "reference": 10**4, "window": 4096,
                "workers": 4, "min_tasks_per_value": 10**5},
          quick={"tasks": [10**3, 10**4, 10**5], "reference": 10**4, "window": 4096,
                 "workers": 4, "min_tasks_per_value": 3 * 10**4},
          smoke={"tasks": [100, 1_000, 3_000], "reference": 1_000, "window": 512,
                 "workers": 4, "min_tasks_per_value": 3_000})
def cost_as_work_grows(ctx: Context) -> List[Result]:
    sizes, reference = ctx.sizes["tasks"], ctx.sizes["reference"]
    window, workers = ctx.sizes["window"], ctx.sizes["workers"]
    least = ctx.sizes["min_tasks_per_value"]

    def loops(n: int) -> int:
        return max(1, -(-least // n))  # small sizes repeat, each in a fresh pool

    def run(n: int) -> Callable[[], Dict[str, float]]:
        return lambda: streamed(_queue(workers), workers, n, window, loops(n))

    # The reference run fills the baseline column: its name says what it is.
    names = {n: f"taskqueue, n={n:,}" if n == reference else f"n={n:,}" for n in sizes}
    samples = ctx.measure({names[n]: run(n) for n in sizes}, warmup=0)
    largest = max(sizes)
    note = None
    if largest != 10**6:
        note = f"{ctx.mode} mode: sizes scaled down; the 1.2x target is checked at n={largest:,}"
    return [
        ctx.compare(samples, Metric("us_per_task", f"cost, n={n:,}", "us/task", False),
                    names[reference], subject=names[n], tasks_measured=n, loops=loops(n),
                    reference_loops=loops(reference),
                    target=Target.at_most(1.2) if n == largest else None,
                    note=note if n == largest else None)
        for n in sizes if n != reference
    ]


@scenario("retry", "7. Retry-heavy: every task fails once then succeeds (Backoff.none())",
          full={"tasks": 50_000, "workers": 4, "retries": 1},
          quick={"tasks": 10_000, "workers": 4, "retries": 1},
          smoke={"tasks": 300, "workers": 4, "retries": 1})
def retry_heavy(ctx: Context) -> List[Result]:
    tasks, workers = ctx.sizes["tasks"], ctx.sizes["workers"]
    make = _queue(workers, retries=1, backoff=Backoff.none())
    samples = ctx.measure({
        "taskqueue, all succeed": lambda: throughput(make, workers, [FailOnce(False) for _ in range(tasks)]),
        "fail once, retry": lambda: throughput(make, workers, [FailOnce() for _ in range(tasks)]),
    })
    metric = Metric("throughput", "throughput, retried once", "tasks/s", True)
    return [ctx.compare(samples, metric, "taskqueue, all succeed", subject="fail once, retry",
                        target=Target.at_least(0.45),
                        note="logging left as a user has it by default (unconfigured): "
                             "each retry is logged at INFO on 'taskqueue', so not recorded")]


@scenario("listener", "8. Observability cost: one add_listener callback attached",
          full={"tasks": 100_000, "workers": 4},
          quick={"tasks": 20_000, "workers": 4},
          smoke={"tasks": 300, "workers": 4})
def listener_cost(ctx: Context) -> List[Result]:
    tasks, workers = ctx.sizes["tasks"], ctx.sizes["workers"]

    def listened() -> TaskQueue:
        queue = TaskQueue(workers=workers)
        queue.add_listener(_ignore)
        return queue

    samples = ctx.measure({
        "taskqueue, no listener": lambda: throughput(_queue(workers), workers, [noop] * tasks),
        "one listener": lambda: throughput(listened, workers, [noop] * tasks),
    })
    metric = Metric("throughput", "throughput, 1 listener", "tasks/s", True)
    return [ctx.compare(samples, metric, "taskqueue, no listener", subject="one listener",
                        target=Target.at_least(0.8))]


def _ignore(event: object) -> None:
    """A listener that does nothing: the cost measured is the events' own."""


@scenario("peers", "9. Peers on scenario 1: Huey and Dramatiq in-process, 4 workers",
          full={"tasks": 100_000, "workers": 4},
          quick={"tasks": 5_000, "workers": 4},
          smoke={"tasks": 200, "workers": 4})
def peers(ctx: Context) -> List[Result]:
    tasks, workers = ctx.sizes["tasks"], ctx.sizes["workers"]
    reasons = {peer.name: peer.unavailable() for peer in PEERS}
    contenders = {
        peer.name: (lambda peer=peer: peer.throughput(workers, tasks))
        for peer in PEERS if reasons[peer.name] is None
    }
    contenders[TASKQUEUE] = lambda: throughput(_queue(workers), workers, [noop] * tasks)
    samples = ctx.measure(contenders)
    return [_peer_row(ctx, samples, THROUGHPUT, peer, reasons[peer.name]) for peer in PEERS]


def _peer_row(ctx: Context, samples: Samples, metric: Metric, peer: Peer, reason: Optional[str],
              *, subject: str = TASKQUEUE, target: Target = Target.above(1.0)) -> Result:
    # A peer that ran gets its ratio; one that could not gets a row saying
    # why, with no number invented.
    version = version_of(peer.distribution)
    shown = f"{peer.name} {version}" if version else peer.name
    if reason is None:
        return ctx.compare(samples, metric, peer.name, subject=subject, target=target,
                           note=f"{shown}: {peer.setup}", peer_version=version)
    return ctx.not_measured(samples, metric, peer.name, subject=subject, target=target,
                            note=f"{shown}: {reason}", peer_version=version)


@scenario("history", "8b. Status history: no-op throughput keeping the last 10,000 statuses, "
          "against keeping none",
          full={"tasks": 100_000, "workers": 4},
          quick={"tasks": 20_000, "workers": 4},
          smoke={"tasks": 300, "workers": 4})
def history_cost(ctx: Context) -> List[Result]:
    tasks, workers = ctx.sizes["tasks"], ctx.sizes["workers"]
    off, on = "taskqueue, history=0", "history=10,000 (the default)"
    samples = ctx.measure({
        off: lambda: throughput(_queue(workers, history=0), workers, [noop] * tasks),
        on: lambda: throughput(_queue(workers), workers, [noop] * tasks),
    })
    metric = Metric("throughput", "throughput, history kept", "tasks/s", True)
    return [ctx.compare(samples, metric, off, subject=on, target=Target.at_least(0.95),
                        note="what get_task_status() costs the hot path: each finished "
                             "task's status recorded (a few list stores, no allocation)")]


@scenario("priority", "10. Priorities, every task at priority 0: the queue's levels against a plain FIFO",
          full={"tasks": 100_000, "workers": 4, "items": 300_000},
          quick={"tasks": 20_000, "workers": 4, "items": 100_000},
          smoke={"tasks": 300, "workers": 4, "items": 2_000})
def equal_priority(ctx: Context) -> List[Result]:
    tasks, workers, items = ctx.sizes["tasks"], ctx.sizes["workers"], ctx.sizes["items"]
    fifo_pool, fifo_queue, levels_queue = ("taskqueue, plain FIFO", "WorkQueue, plain FIFO",
                                           "WorkQueue")
    samples = ctx.measure({
        fifo_pool: lambda: throughput(lambda: FifoTaskQueue(workers=workers), workers,
                                      [noop] * tasks),
        TASKQUEUE: lambda: throughput(_queue(workers), workers, [noop] * tasks),
        fifo_queue: lambda: queue_cycle(FifoWorkQueue, items),
        levels_queue: lambda: queue_cycle(WorkQueue, items),
    })
    cycle = Metric("throughput", "queue alone: admit + get + task_done", "items/s", True)
    return [
        ctx.compare(samples, THROUGHPUT, fifo_pool, target=Target.at_least(0.95),
                    note="scenario 1's no-op run; the FIFO pool is the same TaskQueue with "
                         "its work queue's four ordering hooks replaced by one deque"),
        # No target: the levels' cost alone, magnified (no task, no thread).
        ctx.compare(samples, cycle, fifo_queue, subject=levels_queue,
                    note="one thread, the queue half full, no tasks run: the priority "
                         "levels' own cost per item, which a pool hides behind the rest"),
    ]


@scenario("journal", "11. Durable journal: journaled no-op throughput from 8 producers, "
                     "4 workers, against peers' SQLite storage",
          full={"tasks": 10_000, "workers": 4, "producers": 8},
          quick={"tasks": 500, "workers": 4, "producers": 8},
          smoke={"tasks": 200, "workers": 4, "producers": 8})
def journal(ctx: Context) -> List[Result]:
    tasks, workers, producers = ctx.sizes["tasks"], ctx.sizes["workers"], ctx.sizes["producers"]
    memory, full = "taskqueue, in memory", "taskqueue, durability=full"
    loop = f"SQLite group commit, {workers} threads"
    reasons = {peer.name: peer.unavailable() for peer in JOURNAL_PEERS}
    contenders = {
        memory: lambda: journaled_throughput(workers, producers, tasks, durability=None),
        loop: lambda: group_commit_throughput(workers, producers, tasks),
    }
    for peer in JOURNAL_PEERS:
        if reasons[peer.name] is None:
            contenders[peer.name] = (lambda peer=peer: peer.throughput(workers, tasks, producers))
    contenders[full] = lambda: journaled_throughput(workers, producers, tasks, durability="full")
    contenders[TASKQUEUE] = lambda: journaled_throughput(workers, producers, tasks)
    samples = ctx.measure(contenders)
    synced = Metric("throughput", "throughput, durability=full", "tasks/s", True)
    return [
        # No target: how much of in-memory throughput the journal keeps.
        ctx.compare(samples, THROUGHPUT, memory,
                    note="taskqueue: TaskQueue(workers=4, journal=<fresh file per run>), "
                         "durability='normal' (the default: no fsync per commit; 'full' fsyncs "
                         "each commit group, as the peers' synchronous=FULL does each commit), "
                         "a @queue.task no-op, every handle's result awaited; in memory: the "
                         "same queue and task function without journal="),
        *[_peer_row(ctx, samples, THROUGHPUT, peer, reasons[peer.name])
          for peer in JOURNAL_PEERS],
        # No target: the practical limit of SQLite from Python, for scale.
        ctx.compare(samples, THROUGHPUT, loop,
                    note="SQLite group commit: WAL, synchronous=NORMAL, one writer thread "
                         "inserting what producers handed it (each waits for its commit) and "
                         "deleting finished rows, one executemany each per transaction; "
                         "threads run the committed rows; no futures, no started records"),
        # The peers leave SQLite's default synchronous=FULL, an fsync per
        # commit: durability="full" is the like-for-like comparison.
        *[_peer_row(ctx, samples, synced, peer, reasons[peer.name], subject=full)
          for peer in JOURNAL_PEERS],
    ]


@scenario("journal-live", "11b. Durable journal read live: journaled no-op throughput while "
                          "a JournalView reads the file ten times a second, against no reader",
          full={"tasks": 10_000, "workers": 4, "producers": 8},
          quick={"tasks": 2_000, "workers": 4, "producers": 8},
          smoke={"tasks": 200, "workers": 4, "producers": 8})
def journal_live(ctx: Context) -> List[Result]:
    tasks, workers, producers = ctx.sizes["tasks"], ctx.sizes["workers"], ctx.sizes["producers"]
    alone, read = "taskqueue, journal, no reader", "read live 10 times a second"
    samples = ctx.measure({
        alone: lambda: journaled_throughput(workers, producers, tasks),
        read: lambda: journaled_throughput(workers, producers, tasks, reader_every=0.1),
    })
    metric = Metric("throughput", "throughput, read live", "tasks/s", True)
    return [ctx.compare(samples, metric, alone, subject=read, target=Target.at_least(0.95),
                        note="what `journal PATH` and `dashboard --journal` cost the program "
                             "that owns the file: a JournalView in another thread (its own "
                             "read-only SQLite connection) reading stats, an overview of 100 "
                             "and the dead letters every 0.1 s, ten times what the dashboard "
                             "asks; scenario 11's queue otherwise")]


@scenario("journal-io", "12. Durable journal, I/O-bound: tasks sleeping 1 ms, 8 producers, "
                        "4 workers, journaled against in memory",
          full={"tasks": 4_000, "workers": 4, "producers": 8},
          quick={"tasks": 1_000, "workers": 4, "producers": 8},
          smoke={"tasks": 100, "workers": 4, "producers": 8})
def journal_io(ctx: Context) -> List[Result]:
    tasks, workers, producers = ctx.sizes["tasks"], ctx.sizes["workers"], ctx.sizes["producers"]
    memory = "taskqueue, in memory"
    loop = f"SQLite group commit, {workers} threads"
    samples = ctx.measure({
        memory: lambda: journaled_throughput(workers, producers, tasks, durability=None,
                                             fn=sleep_1ms),
        loop: lambda: group_commit_throughput(workers, producers, tasks, sleep_1ms),
        TASKQUEUE: lambda: journaled_throughput(workers, producers, tasks, fn=sleep_1ms),
    })
    return [
        ctx.compare(samples, THROUGHPUT, memory, target=Target.at_least(0.7),
                    note="each task waits 1 ms in time.sleep, like a short call to another "
                         "service; otherwise as in scenario 11 (a fresh journal file per run, "
                         "durability='normal', every handle awaited)"),
        # No target: what any durable queue on SQLite reaches with these tasks.
        ctx.compare(samples, THROUGHPUT, loop),
    ]


@scenario("redis", "13. On one Redis server: 2 worker processes x 4 threads, every result "
                   "awaited by the producer",
          full={"tasks": 1_000, "processes": 2, "threads": 4, "count_rounds": 2},
          quick={"tasks": 300, "processes": 2, "threads": 4, "count_rounds": 1},
          smoke={"tasks": 50, "processes": 2, "threads": 4, "count_rounds": 1})
def on_redis(ctx: Context) -> List[Result]:
    tasks, processes, threads = ctx.sizes["tasks"], ctx.sizes["processes"], ctx.sizes["threads"]
    url = redis_url()
    unreachable = redis_unreachable(url)
    if unreachable is not None:
        return _redis_not_measured(ctx, unreachable)
    mine, raw, peers = TaskQueueOnRedis(url), RawLoop(url), redis_peers(url)
    reasons = {peer.name: peer.unavailable() for peer in peers}
    contenders = {peer.name: (lambda peer=peer: peer.throughput(threads, tasks, processes))
                  for peer in peers if reasons[peer.name] is None}
    contenders[raw.name] = lambda: raw.throughput(threads, tasks, processes)
    contenders[TASKQUEUE] = lambda: mine.throughput(threads, tasks, processes)
    samples = ctx.measure(contenders)
    # Apart, under MONITOR, which slows the server: no throughput is taken from it.
    trips = ctx.measure({ONE_ROUND_TRIP: lambda: {ROUND_TRIPS.key: 1.0},
                         TASKQUEUE: lambda: mine.round_trips(threads, tasks, processes)},
                        warmup=0, rounds=ctx.sizes["count_rounds"])
    return [
        *[_peer_row(ctx, samples, THROUGHPUT, peer, reasons[peer.name],
                    target=_redis_target(peer.name)) for peer in peers],
        ctx.compare(samples, THROUGHPUT, raw.name, target=_redis_target(raw.name),
                    note=f"{raw.name}: {raw.setup}; taskqueue: {mine.setup}; every contender "
                         "on the same server, in a fresh namespace with fresh worker processes "
                         "each run, warmed with one task per thread"),
        ctx.compare(trips, ROUND_TRIPS, ONE_ROUND_TRIP, target=Target.at_most(3.0),
                    note=_round_trip_note(trips[TASKQUEUE])),
    ]


def _redis_target(name: str) -> Target:
    # The bounds; any other peer is only to be beaten.
    return {DramatiqOnRedis.name: Target.at_least(2.0),
            RawLoop.name: Target.at_least(0.5)}.get(name, Target.above(1.0))


def _round_trip_note(runs: List[Dict[str, float]]) -> str:
    by_command = {name: statistics.median(run.get(name, 0.0) for run in runs)
                  for name in runs[0] if name != ROUND_TRIPS.key}
    shown = ", ".join(f"{name} {value:.3f}" for name, value in by_command.items())
    return ("round trips: every command the run's clients sent Redis between two markers, "
            "read with MONITOR (INFO commandstats also counts each command a Lua script runs, "
            "and every other client of a shared server), divided by the tasks; an EVALSHA is "
            "one round trip, the commands its script runs none; a BLPOP counts once however "
            "long it blocks (an idle worker's wait included); pub/sub messages pushed to the "
            "producer are none; the workers' own timers (PROMOTE, REQUEUE_EXPIRED, "
            f"heartbeats) count too. Per task: {shown}")


def _redis_not_measured(ctx: Context, reason: str) -> List[Result]:
    # No server, no figures at all, taskqueue's included: every row says why.
    note = f"not measured: {reason} (TASKQUEUE_BENCH_REDIS names another server)"
    names = [peer.name for peer in REDIS_PEERS] + [RawLoop.name]
    return [*[ctx.not_measured(None, THROUGHPUT, name, note, target=_redis_target(name),
                               redis_unreachable=True) for name in names],
            ctx.not_measured(None, ROUND_TRIPS, ONE_ROUND_TRIP, note,
                             target=Target.at_most(3.0), redis_unreachable=True)]
