"""taskqueue's benchmark suite: what taskqueue costs per task, next to its alternatives.

Run it from the repository root::

    python -m benchmarks                 # the whole suite, a few minutes
    python -m benchmarks --quick         # everything, well under a minute
    python -m benchmarks --smoke         # tiny sizes; what CI runs (checks it runs, not speed)
    python -m benchmarks --only noop     # one scenario (--list shows them)
    python -m benchmarks --json out.json --plot charts/ --markdown perf.md

Every figure is a **ratio measured in one run**: taskqueue and its baselines
(``ThreadPoolExecutor``, a bare ``queue.Queue`` loop, a raw SQLite
group-commit loop, Huey, Dramatiq, persist-queue) run in the same process,
interleaved round by round, and the ratio ``taskqueue / baseline`` is taken
per round; the table shows its median with the min and max, because these
machines are shared and noisy. The ``redis`` scenario runs its contenders
(taskqueue, Dramatiq, RQ, SAQ, a raw redis-py loop) on one Redis server
(``$TASKQUEUE_BENCH_REDIS``, else ``redis://127.0.0.1:6379/0``), with
worker processes started for each run; without a server it measures
nothing and says so.

Layout: ``registry`` (the ``@scenario`` registry and the context a scenario
runs in), ``scenarios`` (one small function per scenario), ``harness``
(rounds, interleaving, medians, ratios), ``workloads`` (drivers of any
Executor, and of several producers at once), ``baselines``
(ThreadPoolExecutor, the bare loop, the SQLite group-commit loop),
``peers`` (Huey and Dramatiq in memory, persist-queue and SqliteHuey on a
file, all in-process), ``redis_peers`` (every contender on Redis: its
worker processes and its producer), ``redis_tasks`` (what those worker
processes import), ``roundtrips`` (commands sent to Redis, counted with
MONITOR), ``report`` (table, Markdown, JSON), ``plot`` (PNG charts,
matplotlib optional), ``progress``, ``cli``.

JSON schema (``--json FILE``, ``meta.schema`` = 1)::

    {
      "meta": {
        "schema": 1,                 # bumped when a key changes meaning or goes away
        "taskqueue": "0.1.0",        # the version measured
        "commit": {"id": "4e03095...", "branch": "main", "dirty": false} | null,
        "cpu_count": 2,
        "python": "3.11.7",
        "implementation": "CPython",
        "platform": "Linux-6.1-x86_64-with-glibc2.36",
        "machine": "x86_64",
        "date": "2025-01-31T12:00:00+00:00",     # UTC, when the run started
        "mode": "full" | "quick" | "smoke",
        "command": "python -m benchmarks --json out.json",
        "rounds": 5,                 # rounds kept per figure
        "warmup": 1,                 # rounds run first and thrown away
        "peers": {"huey": "2.5.0" | null, "dramatiq": "1.17.0" | null,
                  "persist-queue": "1.1.0" | null, "rq": "2.0" | null, "saq": "0.26" | null},
        "load_average": {"start": [1.2, 0.8, 0.5] | null, "end": [...] | null}   # 1, 5, 15 min
      },
      "results": [                   # one per table row
        {
          "scenario": "noop",        # the name --only takes
          "metric": "throughput",    # the row's label
          "unit": "tasks/s",
          "better": "higher" | "lower",     # which way a figure is good
          "baseline_name": "ThreadPoolExecutor(4)",
          "taskqueue_name": "taskqueue",    # the measured side (a variant in some rows)
          "baseline": 80000.0,       # median over the rounds, or null if not measured
          "baseline_min": ..., "baseline_max": ...,
          "taskqueue": 140000.0,     # median over the rounds, or null
          "taskqueue_min": ..., "taskqueue_max": ...,
          "ratio": 1.75,             # median of the per-round taskqueue / baseline, or null
          "ratio_min": 1.6, "ratio_max": 1.9,
          "target": {"op": ">=" | ">" | "<=" | "<", "value": 2.0} | null,
          "met": true | false | null,       # null: no target, or not measured
          "rounds": 5,
          "sizes": {"tasks": 100000, "workers": 4},   # what this mode ran, plus row parameters
          "note": "..." | null,      # how a peer was set up, why it could not run, ...
          "values": {"baseline": [...], "taskqueue": [...], "ratios": [...]}   # per round
        }
      ]
    }

A scenario that failed with an error has one row with metric
"did not finish", null figures and the error in ``note``. Without a Redis
server, every row of the redis scenario has null figures, ``"redis_unreachable":
true`` in ``sizes`` and the reason in ``note``.
"""

from __future__ import annotations
