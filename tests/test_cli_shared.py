"""Tests of ``python -m taskqueue worker`` and ``python -m taskqueue redis``, run as commands.

Every command runs as a real process. The worker runs a tasks module that
each test writes into its own ``tmp_path`` and runs from there (the current
folder), as a program's ``myapp/tasks.py`` would be; its tasks tell the test
what they did through Redis lists of the test's namespace, which the test
waits on with blocking pops. The queues the ``redis`` command looks into are
filled from this process: a producer-only queue, and a consuming one whose
tasks fail (dead letters) or hold (a running task with its lease).

Tests that need a password, or kill a server, start a private redis-server
(``tests/redis_processes.py``); the others use the shared one, in a
namespace of their own. Skips without Redis; fails under TASKQUEUE_REQUIRE_REDIS=1.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from broker_contract import eventually
from conftest import WAIT
from redis_processes import ROOT, PrivateRedis, free_port
from taskqueue import RedisBroker, TaskHandle, TaskQueue

pytestmark = pytest.mark.timeout(60)

EXIT_OK, EXIT_USAGE = 0, 2

APP = '''\
"""A program's tasks module on Redis (written by tests/test_cli_shared.py)."""
import os

import redis

from taskqueue import RedisBroker, TaskQueue

URL, NAMESPACE = os.environ["TQ_TEST_URL"], os.environ["TQ_TEST_NAMESPACE"]
LOG = "{%s}-log:" % NAMESPACE

queue = TaskQueue(broker=RedisBroker(URL, namespace=NAMESPACE), workers=3, name="mailer",
                  maxsize=0)
producer = TaskQueue(broker=RedisBroker(URL, namespace=NAMESPACE), workers=0)
_client = redis.Redis.from_url(URL, socket_timeout=90)


@queue.task(name="send_email")
def send_email(to):
    _client.rpush(LOG + "sent", to)
    return to


@queue.task(name="hold")
def hold(tag):
    _client.rpush(LOG + "started", tag)
    _client.blpop([LOG + "release:" + tag], timeout=60)
    return tag


@queue.task(name="flaky", retries=0)
def flaky(i):
    if not _client.exists(LOG + "fixed"):
        raise ValueError("not fixed yet: %s" % i)
    _client.rpush(LOG + "flaky", i)
    return i


def make_queue():
    return queue
'''

ODD = '''\
"""Attributes that are not a queue the worker command can run."""
from taskqueue import TaskQueue

not_a_queue = 42
local = TaskQueue(workers=1)


def returns_int():
    return 3


def raises():
    raise KeyError("no queue here")
'''

CLOSED = '''\
"""A queue on Redis that was shut down as the module was imported."""
import os

from taskqueue import RedisBroker, TaskQueue

queue = TaskQueue(broker=RedisBroker(os.environ["TQ_TEST_URL"],
                                     namespace=os.environ["TQ_TEST_NAMESPACE"]), name="closed")
queue.shutdown()
'''

MODULES = {
    "app.py": APP,
    "odd.py": ODD,
    "closed.py": CLOSED,
    "raises_on_import.py": 'raise RuntimeError("boom\\nsecond line")\n',
    "exits_on_import.py": "import sys\nsys.exit(0)\n",
    "broken_syntax.py": "def f(:\n",
}

STARTED = "INFO taskqueue.worker: worker: queue "


# -- helpers -------------------------------------------------------------------------

@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A folder holding the tasks modules; commands run from it, as from a project's root."""
    folder = tmp_path / "project"
    folder.mkdir()
    for name, text in MODULES.items():
        (folder / name).write_text(text)
    return folder


def environment(url: str = "redis://127.0.0.1:1/0", namespace: str = "unused") -> Dict[str, str]:
    """The package importable, the tasks module told where its queue is; not the folder."""
    return dict(os.environ, PYTHONPATH=str(ROOT), TQ_TEST_URL=url, TQ_TEST_NAMESPACE=namespace)


def run_cli(*args: str, cwd: Path = ROOT, env: Optional[Dict[str, str]] = None,
            python_options: Tuple[str, ...] = (),
            **options: Any) -> subprocess.CompletedProcess[str]:
    """``python -m taskqueue ARGS``, to its end."""
    options.setdefault("capture_output", True)
    return subprocess.run([sys.executable, *python_options, "-m", "taskqueue", *args],
                          cwd=str(cwd), env=env or environment(), text=True, timeout=WAIT,
                          **options)


def run_many(commands: Dict[str, List[str]], *, cwd: Path = ROOT,
             env: Optional[Dict[str, str]] = None) -> Dict[str, subprocess.CompletedProcess[str]]:
    """Each ``python -m taskqueue ARGS`` of ``commands``, all at once (they are slow to start)."""
    processes = {key: subprocess.Popen([sys.executable, "-m", "taskqueue", *args], cwd=str(cwd),
                                       env=env or environment(), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
                 for key, args in commands.items()}
    done = {}
    for key, process in processes.items():
        try:
            out, err = process.communicate(timeout=WAIT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        done[key] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return done


def usage_error(result: subprocess.CompletedProcess[str], command: str) -> str:
    """The one line of a usage error (exit 2, nothing on stdout, no traceback)."""
    assert result.returncode == EXIT_USAGE, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and result.stderr.endswith("\n"), result.stderr
    assert lines[0].startswith(f"taskqueue {command}: error: "), lines[0]
    return lines[0]


class Worker:
    """One ``python -m taskqueue worker`` process; its stderr goes to a file."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process, self._log = process, log

    def log(self) -> str:
        return self._log.read_text(errors="replace")

    def wait_for(self, text: str) -> str:
        """The log once it holds ``text`` (fails if the process ends first)."""
        assert eventually(lambda: text in self.log() or self.process.poll() is not None), \
            f"{text!r} never came:\n{self.log()}"
        assert text in self.log(), f"the worker ended ({self.process.poll()}):\n{self.log()}"
        return self.log()

    def started_line(self) -> str:
        log = self.wait_for(STARTED)
        return next(line for line in log.splitlines() if STARTED in line)

    def stop(self, signal_number: int = signal.SIGTERM) -> int:
        """Signal it to stop; its exit status."""
        self.process.send_signal(signal_number)
        return self.process.wait(WAIT)


@pytest.fixture
def spawn(app_dir: Path) -> Iterator[Callable[..., Worker]]:
    """Start worker processes in the project folder; whatever is left is killed afterwards."""
    started: List[Worker] = []

    def start(*args: str, env: Dict[str, str]) -> Worker:
        log = app_dir.parent / f"worker-{len(started)}.log"
        with open(log, "wb") as stderr:
            process = subprocess.Popen([sys.executable, "-m", "taskqueue", "worker", *args],
                                       cwd=str(app_dir), env=env, stdout=subprocess.DEVNULL,
                                       stderr=stderr)
        started.append(Worker(process, log))
        return started[-1]

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


def _never_here(*args: Any) -> None:  # pragma: no cover - the workers run the tasks
    raise AssertionError("a producer-only queue ran a task")


def producer(url: str, namespace: str) -> TaskQueue:
    """A web process's queue on the namespace: the tasks module's names, submit only."""
    queue = TaskQueue(broker=RedisBroker(url, namespace=namespace, socket_timeout=2.0),
                      workers=0, maxsize=0)
    for name in ("send_email", "hold", "flaky"):
        queue.task(name=name)(_never_here)
    return queue


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    """A redis-py client of the shared server, for blocking pops longer than WAIT."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=WAIT + 10)
    yield client
    client.close()


def log_key(namespace: str, name: str) -> str:
    return "{%s}-log:%s" % (namespace, name)


def pop(client: Any, namespace: str, name: str) -> str:
    """The next entry of a test log, waiting for it; fails the test if none comes."""
    found = client.blpop([log_key(namespace, name)], timeout=WAIT)
    assert found is not None, f"nothing came in the {name} log within {WAIT}s"
    return str(found[1].decode())


def summary(url: str, namespace: str) -> Dict[str, Any]:
    """``redis URL --namespace NS``'s summary, read back into numbers."""
    result = run_cli("redis", url, "--namespace", namespace)
    assert (result.returncode, result.stderr) == (EXIT_OK, ""), result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"queue {namespace} on {url}", lines[0]
    found: Dict[str, Any] = {"text": result.stdout, "running_tasks": [], "worker_ids": []}
    for line in lines[1:]:
        counted = re.fullmatch(r"  (pending|scheduled|running|dead|workers) +(\d+)(.*)", line)
        running = re.fullmatch(r"    ([0-9a-f]{32})  (\S+)  delivery (\d+)  lease ([\d.]+)s left",
                               line)
        worker = re.fullmatch(r"    (\S+:(\d+):\w+)  running (\d+)", line)
        if counted:
            found[counted.group(1)] = int(counted.group(2))
            found[counted.group(1) + "_detail"] = counted.group(3)
        elif running:
            found["running_tasks"].append(
                (running.group(1), running.group(2), int(running.group(3)),
                 float(running.group(4))))
        elif worker:
            found["worker_ids"].append((int(worker.group(2)), int(worker.group(3))))
        else:
            raise AssertionError(f"a summary line not understood: {line!r}")
    return found


# -- worker: what cannot run ---------------------------------------------------------

TARGETS = {
    "app": "expected MODULE:ATTR (e.g. myapp.tasks:queue), got 'app'",
    ":queue": "expected MODULE:ATTR (e.g. myapp.tasks:queue), got ':queue'",
    "app:": "expected MODULE:ATTR (e.g. myapp.tasks:queue), got 'app:'",
    "no_such_module:queue":
        "cannot import no_such_module: ModuleNotFoundError: No module named 'no_such_module'",
    "raises_on_import:queue": "cannot import raises_on_import: RuntimeError: boom second line",
    "broken_syntax:queue": "cannot import broken_syntax: SyntaxError: ",
    # A module that calls sys.exit() as it is imported does not import either.
    "exits_on_import:queue": "cannot import exits_on_import: SystemExit: 0",
    "odd:missing": "odd has no attribute 'missing'",
    "odd:not_a_queue": "odd:not_a_queue is not a TaskQueue (it is int)",
    "odd:returns_int": "odd:returns_int is not a TaskQueue (it is int)",
    "odd:raises": "odd:raises() raised KeyError: 'no queue here'",
    "odd:local": "odd:local is on a local broker (MemoryBroker): its tasks live in the "
                 "process that submits them",
}


def test_a_target_that_is_not_a_shared_queue_is_one_line_and_exit_2(app_dir: Path) -> None:
    results = run_many({target: ["worker", target] for target in TARGETS}, cwd=app_dir)
    lines = {target: usage_error(result, "worker") for target, result in results.items()}
    wrong = {target: line for target, line in lines.items()
             if not line.startswith(f"taskqueue worker: error: {TARGETS[target]}")}
    assert wrong == {}


def test_the_module_is_imported_from_the_current_folder(app_dir: Path, tmp_path: Path) -> None:
    # Found from the project folder; not from elsewhere (not on PYTHONPATH).
    assert "odd:not_a_queue is not a TaskQueue" in run_cli(
        "worker", "odd:not_a_queue", cwd=app_dir).stderr
    assert "cannot import odd: ModuleNotFoundError" in run_cli(
        "worker", "odd:not_a_queue", cwd=tmp_path).stderr


@pytest.mark.skipif(sys.version_info < (3, 11), reason="python -P is new in 3.11")
def test_the_current_folder_is_searched_by_the_command_itself(app_dir: Path) -> None:
    # -P keeps Python from putting the current folder on sys.path: the command
    # must (as a console script, which has no such entry, would need).
    result = run_cli("worker", "odd:not_a_queue", cwd=app_dir, python_options=("-P",))
    assert "odd:not_a_queue is not a TaskQueue" in usage_error(result, "worker")


WORKER_OPTIONS = {
    "--workers 0": "argument --workers: must be >= 1, got 0",
    "--workers many": "argument --workers: expected a whole number >= 1, got 'many'",
    "--grace -1": "argument --grace: must be a number of seconds >= 0, got '-1'",
    "--grace nan": "argument --grace: must be a number of seconds >= 0, got 'nan'",
    "--log-level nonsense": "argument --log-level: invalid choice: 'nonsense'",
}


def test_bad_worker_options_are_one_line_and_exit_2(app_dir: Path, redis_url: str,
                                                    namespace: str) -> None:
    # A target that would run: only the option stops it.
    results = run_many({options: ["worker", "app:queue", *options.split()]
                        for options in WORKER_OPTIONS},
                       cwd=app_dir, env=environment(redis_url, namespace))
    lines = {options: usage_error(result, "worker") for options, result in results.items()}
    wrong = {options: line for options, line in lines.items()
             if WORKER_OPTIONS[options] not in line}
    assert wrong == {}


def test_a_queue_on_redis_that_cannot_run_is_one_line_and_exit_2(app_dir: Path, redis_url: str,
                                                                  namespace: str) -> None:
    results = run_many({"submit only": ["worker", "app:producer"],
                        "shut down": ["worker", "closed:queue"]},
                       cwd=app_dir, env=environment(redis_url, namespace))
    assert "app:producer has workers=0 (it only submits); pass --workers N" in \
        usage_error(results["submit only"], "worker")
    assert "closed is shut down" in usage_error(results["shut down"], "worker")


def test_a_bad_url_in_the_module_is_one_line_without_its_password(app_dir: Path) -> None:
    result = run_cli("worker", "app:queue", cwd=app_dir,
                     env=environment("http://:pw-in-module@example.invalid/0"))
    line = usage_error(result, "worker")
    assert "cannot import app: ValueError" in line and "pw-in-module" not in result.stderr


def test_an_unreachable_server_is_one_line_and_exit_2(app_dir: Path) -> None:
    # With --workers too: it is not the default's lookup that finds it out.
    port = free_port()
    started = time.monotonic()
    results = run_many({"default": ["worker", "app:queue"],
                        "--workers 2": ["worker", "app:queue", "--workers", "2"]},
                       cwd=app_dir, env=environment(f"redis://:pw-nobody@127.0.0.1:{port}/0"))
    assert time.monotonic() - started < 10
    for result in results.values():
        line = usage_error(result, "worker")
        assert f"redis://:***@127.0.0.1:{port}/0" in line and "pw-nobody" not in result.stderr


# -- worker: running -----------------------------------------------------------------

def test_the_worker_says_what_it_runs_runs_it_and_stops_on_sigterm(
        spawn: Callable[..., Worker], redis_url: str, namespace: str, client: Any) -> None:
    worker = spawn("app:queue", env=environment(redis_url, namespace))
    line = worker.started_line()
    # The queue's name, where it is, its workers (the queue's own 3) and its tasks.
    assert line.endswith(f"{STARTED}mailer on {redis_url} namespace {namespace}, "
                         "3 worker(s), tasks: flaky, hold, send_email"), line
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO", line), line  # timed

    queue = producer(redis_url, namespace)
    try:
        handle = queue.tasks["send_email"].submit("ada@example.com")
        assert pop(client, namespace, "sent") == "ada@example.com"
        assert handle.result(WAIT) == "ada@example.com"
    finally:
        queue.shutdown(cancel_futures=True, timeout=1)

    assert worker.stop() == EXIT_OK
    log = worker.log()
    assert "worker: stopping" in log and log.rstrip().endswith("worker: stopped")
    assert "Traceback" not in log


def test_workers_n_runs_n_tasks_at_once(spawn: Callable[..., Worker], redis_url: str,
                                        namespace: str, client: Any) -> None:
    worker = spawn("app:queue", "--workers", "2", env=environment(redis_url, namespace))
    assert ", 2 worker(s), " in worker.started_line()
    queue = producer(redis_url, namespace)
    try:
        # Given two tasks held while they run, and a third behind them
        held = [queue.tasks["hold"].submit(tag) for tag in ("a", "b")]
        assert {pop(client, namespace, "started") for _ in held} == {"a", "b"}  # both at once
        queue.tasks["send_email"].submit("c")
        # (its heartbeat, every 2 s, says how many it runs)
        assert eventually(lambda: [w["running"] for w in queue.broker.workers()] == [2])
        # Then the summary shows the worker process, its two running tasks and the one pending
        seen = summary(redis_url, namespace)
        assert (seen["running"], seen["pending"], seen["workers"]) == (2, 1, 1)
        assert sorted((i, n, d) for i, n, d, _ in seen["running_tasks"]) == \
            sorted((h.id, "hold", 1) for h in held)
        assert all(0 < lease <= 30 for *_, lease in seen["running_tasks"])  # the default lease
        assert seen["worker_ids"] == [(worker.process.pid, 2)]
        client.rpush(log_key(namespace, "release:a"), "go")
        assert pop(client, namespace, "sent") == "c"  # a thread came free for it
        client.rpush(log_key(namespace, "release:b"), "go")
        assert [h.result(WAIT) for h in held] == ["a", "b"]
    finally:
        queue.shutdown(cancel_futures=True, timeout=1)
    assert worker.stop() == EXIT_OK


def test_a_function_that_returns_the_queue_is_run(spawn: Callable[..., Worker], redis_url: str,
                                                  namespace: str, client: Any) -> None:
    worker = spawn("app:make_queue", "--workers", "1", env=environment(redis_url, namespace))
    assert f"{STARTED}mailer on {redis_url} namespace {namespace}, 1 worker(s), " \
        in worker.started_line()
    queue = producer(redis_url, namespace)
    try:
        queue.tasks["send_email"].submit("grace@example.com")
        assert pop(client, namespace, "sent") == "grace@example.com"
    finally:
        queue.shutdown(cancel_futures=True, timeout=1)
    assert worker.stop(signal.SIGINT) == EXIT_OK  # Ctrl-C stops it as SIGTERM does
    assert worker.log().rstrip().endswith("worker: stopped")


def test_log_level_warning_leaves_out_the_info_lines(spawn: Callable[..., Worker], redis_url: str,
                                                     namespace: str, client: Any) -> None:
    worker = spawn("app:queue", "--log-level", "WARNING", env=environment(redis_url, namespace))
    queue = producer(redis_url, namespace)
    try:
        queue.tasks["send_email"].submit("x@example.com")
        assert pop(client, namespace, "sent") == "x@example.com"  # it runs, silently
    finally:
        queue.shutdown(cancel_futures=True, timeout=1)
    assert worker.stop() == EXIT_OK
    assert worker.log() == ""


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, with a password."""
    server = PrivateRedis(tmp_path / "redis", persistent=False, password="pw-s3cret-42")
    server.start()
    yield server
    server.kill()


def test_a_password_is_never_printed(private_redis: PrivateRedis, spawn: Callable[..., Worker],
                                     app_dir: Path) -> None:
    shown = f"redis://:***@127.0.0.1:{private_redis.port}/0"
    env = environment(private_redis.url, "secret-ns")
    worker = spawn("app:queue", env=env)
    assert f"{STARTED}mailer on {shown} namespace secret-ns, 3 worker(s)" in worker.started_line()
    looked = run_cli("redis", private_redis.url, "--namespace", "secret-ns")
    assert looked.returncode == EXIT_OK, looked.stderr  # it did get in, with the password
    assert looked.stdout.startswith(f"queue secret-ns on {shown}\n")
    assert worker.stop() == EXIT_OK

    wrong = private_redis.url.replace("pw-s3cret-42", "pw-wrong-17")
    refused = [run_cli("redis", wrong, "--namespace", "secret-ns"),
               run_cli("worker", "app:queue", cwd=app_dir, env=environment(wrong, "secret-ns"))]
    assert "redis://:***@" in usage_error(refused[0], "redis")
    assert "redis://:***@" in usage_error(refused[1], "worker")
    for result in [looked, *refused]:
        assert "pw-s3cret-42" not in result.stdout + result.stderr
        assert "pw-wrong-17" not in result.stdout + result.stderr
    assert "pw-s3cret-42" not in worker.log()


def test_a_redis_outage_is_logged_without_tracebacks(tmp_path: Path,
                                                     spawn: Callable[..., Worker]) -> None:
    server = PrivateRedis(tmp_path / "redis", persistent=False)
    server.start()
    try:
        worker = spawn("app:queue", env=environment(server.url, "outage"))
        worker.started_line()
        server.kill()
        worker.wait_for("lost Redis at")
        # The maintenance thread calls Redis at least once a second: three
        # seconds of outage is long enough to show what it logs.
        assert not eventually(lambda: "Traceback" in worker.log(), timeout=3.0), worker.log()
    finally:
        server.kill()


# -- redis: what cannot run ----------------------------------------------------------

def test_a_bad_url_is_one_line_and_exit_2() -> None:
    urls = ["http://x", "redis://host:notaport", "", "redis://:pw-bad-url@[::1/0"]
    started = time.monotonic()
    results = run_many({url: ["redis", url] for url in urls})
    assert time.monotonic() - started < 10
    for result in results.values():
        usage_error(result, "redis")
        assert "pw-bad-url" not in result.stderr


def test_an_unreachable_server_is_one_line_exit_2_at_once() -> None:
    port = free_port()
    started = time.monotonic()
    result = run_cli("redis", f"redis://:pw-nobody@127.0.0.1:{port}/0")
    line = usage_error(result, "redis")
    assert time.monotonic() - started < 10
    assert f"redis://:***@127.0.0.1:{port}/0" in line and "pw-nobody" not in result.stderr


def test_a_bad_namespace_is_one_line_and_exit_2(redis_url: str) -> None:
    line = usage_error(run_cli("redis", redis_url, "--namespace", "a{b"), "redis")
    assert "namespace must be a non-empty str without braces" in line


# -- redis: looking and acting on a live queue ---------------------------------------

class LiveQueue:
    """A namespace holding tasks in every state, made by queues of this process.

    3 dead letters (2 ``boom``, 1 ``crash``), 1 ``hold`` running (leased by
    this process's single worker, until ``release``), 4 pending at
    priorities 5, 0, 0 and -3, and 2 scheduled (delays far ahead).
    """

    def __init__(self, url: str, namespace: str) -> None:
        self.release = threading.Event()
        started = threading.Event()
        self.consumer = TaskQueue(broker=RedisBroker(url, namespace=namespace,
                                                     visibility_timeout=60), workers=1)

        @self.consumer.task(name="boom", retries=0)
        def boom(i: int) -> None:
            raise ValueError(f"bad {i}\nsecond line")

        @self.consumer.task(name="crash", retries=0)
        def crash(i: int) -> None:
            raise KeyError(i)

        @self.consumer.task(name="hold")
        def hold() -> None:
            started.set()
            self.release.wait(WAIT)

        self.consumer.start()
        self.dead: List[TaskHandle] = [boom.submit(1), boom.submit(2), crash.submit(3)]
        for handle in self.dead:
            assert handle.exception(WAIT) is not None
        self.running = hold.submit()
        assert started.wait(WAIT)  # the consumer's one worker is busy from now on
        self.producer = TaskQueue(broker=RedisBroker(url, namespace=namespace), workers=0,
                                  maxsize=0)
        send = self.producer.task(name="send")(_never_here)
        for priority in (5, 0, 0, -3):
            send.options(priority=priority).submit(priority)
        send.options(delay=300).submit("later")
        send.options(delay=200).submit("later")

    def dead_count(self) -> int:
        """How many dead letters Redis holds, as the library reads it."""
        return len(self.producer.dead_letters())

    def close(self) -> None:
        self.release.set()
        self.producer.shutdown(cancel_futures=True, timeout=1)
        self.consumer.shutdown(cancel_futures=True, timeout=WAIT)


@pytest.fixture
def live(redis_url: str, namespace: str) -> Iterator[LiveQueue]:
    queue = LiveQueue(redis_url, namespace)
    yield queue
    queue.close()


def test_the_summary_counts_pending_by_priority_scheduled_running_dead_and_workers(
        live: LiveQueue, redis_url: str, namespace: str) -> None:
    # (the consumer's heartbeat, every 2 s, says it runs one)
    assert eventually(lambda: [w["running"] for w in live.consumer.broker.workers()] == [1])
    seen = summary(redis_url, namespace)
    assert seen["pending"] == 4 and seen["pending_detail"] == "  (by priority: 5: 1, 0: 2, -3: 1)"
    assert seen["scheduled"] == 2
    due = re.fullmatch(r"  \(next due in ([\d.]+)s\)", seen["scheduled_detail"])
    assert due and 190 < float(due.group(1)) <= 200  # the nearer of the two delays
    assert seen["running"] == 1
    [(task_id, name, delivery, lease)] = seen["running_tasks"]
    assert (task_id, name, delivery) == (live.running.id, "hold", 1)
    assert 30 < lease <= 60  # this consumer's lease, not the default 30 s
    assert seen["dead"] == 3
    assert seen["workers"] == 1 and seen["worker_ids"] == [(os.getpid(), 1)]


def test_an_empty_namespace_is_all_zeros(redis_url: str, namespace: str) -> None:
    seen = summary(redis_url, namespace)
    assert [seen[k] for k in ("pending", "scheduled", "running", "dead", "workers")] == [0] * 5
    assert (seen["pending_detail"], seen["scheduled_detail"]) == ("", "")


def test_dead_lists_each_letter_with_its_error_in_one_line(live: LiveQueue, redis_url: str,
                                                           namespace: str) -> None:
    result = run_cli("redis", redis_url, "--dead", "--namespace", namespace)
    assert (result.returncode, result.stderr) == (EXIT_OK, "")
    lines = result.stdout.splitlines()
    assert lines[0] == f"3 dead letter(s) in {redis_url} ({namespace})"
    letters = [re.fullmatch(r"  ([0-9a-f]{32})  (\w+)  (\d+) attempt\(s\)  failed "
                            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line) for line in lines[1::2]]
    assert all(letters), lines
    assert [(m.group(1), m.group(2), m.group(3)) for m in letters] == \
        [(h.id, n, "1") for h, n in zip(live.dead, ["boom", "boom", "crash"])]  # oldest first
    # The error as `journal --dead` shows it: type and message, not the remote traceback.
    assert lines[2::2] == ["    ValueError: bad 1 second line", "    ValueError: bad 2 second line",
                           "    KeyError: 3"]

    only = run_cli("redis", redis_url, "--dead", "--name", "crash", "--namespace", namespace)
    assert only.stdout.splitlines() == [f"1 dead letter(s) in {redis_url} ({namespace})",
                                        lines[5], lines[6]]


def test_requeue_dead_by_name_then_purge_dead(live: LiveQueue, redis_url: str,
                                              namespace: str) -> None:
    # Not a terminal (a pipe): the actions run without --yes (see the pty test).
    requeued = run_cli("redis", redis_url, "requeue-dead", "--name", "crash",
                       "--namespace", namespace)
    assert (requeued.returncode, requeued.stderr) == (EXIT_OK, "")
    assert requeued.stdout == f"requeued 1 dead letter(s) in {redis_url} ({namespace})\n"
    seen = summary(redis_url, namespace)
    assert (seen["dead"], seen["pending"]) == (2, 5)  # crash(3) waits again, at its priority 0
    assert seen["pending_detail"] == "  (by priority: 5: 1, 0: 3, -3: 1)"

    purged = run_cli("redis", redis_url, "purge-dead", "--namespace", namespace)
    assert purged.stdout == f"purged 2 dead letter(s) from {redis_url} ({namespace})\n"
    seen = summary(redis_url, namespace)
    assert (seen["dead"], seen["pending"], seen["scheduled"], seen["running"]) == (0, 5, 2, 1)
    again = run_cli("redis", redis_url, "requeue-dead", "--yes", "--namespace", namespace)
    assert again.stdout.startswith("requeued 0 dead letter(s)")


CONFLICTS = {
    "requeue-dead --dead": "--dead lists dead letters; it does not go with requeue-dead",
    "purge-dead --dead --yes": "--dead lists dead letters; it does not go with purge-dead",
    "purge-dead --name boom --yes": "--name does not go with purge-dead, which purges them all",
    "requeue --yes": "argument ACTION: invalid choice: 'requeue'",
}


def test_options_that_do_not_go_together_change_nothing(live: LiveQueue, redis_url: str,
                                                        namespace: str) -> None:
    results = run_many({args: ["redis", redis_url, *args.split(), "--namespace", namespace]
                        for args in CONFLICTS})
    lines = {args: usage_error(result, "redis") for args, result in results.items()}
    assert {args: line for args, line in lines.items() if CONFLICTS[args] not in line} == {}
    assert live.dead_count() == 3


@pytest.mark.parametrize("action", ["requeue-dead", "purge-dead"])
def test_on_a_terminal_an_action_needs_yes(live: LiveQueue, redis_url: str, namespace: str,
                                           action: str) -> None:
    # stdout a terminal (a pty), as when a person types the command
    parent, child = pty.openpty()
    try:
        refused = run_cli("redis", redis_url, action, "--namespace", namespace, stdout=child,
                          stderr=subprocess.PIPE, capture_output=False)
        assert refused.returncode == EXIT_USAGE and "Traceback" not in refused.stderr
        assert refused.stderr == f"taskqueue redis: error: {action} changes the queue; " \
                                 "pass --yes to confirm\n"
        assert live.dead_count() == 3  # nothing changed
        confirmed = run_cli("redis", redis_url, action, "--yes", "--namespace", namespace,
                            stdout=child, stderr=subprocess.PIPE, capture_output=False)
        assert (confirmed.returncode, confirmed.stderr) == (EXIT_OK, "")
        assert select.select([parent], [], [], WAIT)[0], "nothing came on the terminal"
        assert os.read(parent, 4096).decode().startswith(
            "requeued 3" if action == "requeue-dead" else "purged 3")
    finally:
        os.close(parent)
        os.close(child)
    assert live.dead_count() == 0


def test_requeued_dead_letters_run_on_a_worker(spawn: Callable[..., Worker], redis_url: str,
                                               namespace: str, client: Any) -> None:
    # Given a worker process whose flaky task fails (retries=0) until it is fixed
    worker = spawn("app:queue", "--workers", "1", env=environment(redis_url, namespace))
    worker.started_line()
    queue = producer(redis_url, namespace)
    try:
        for handle in [queue.tasks["flaky"].submit(i) for i in (1, 2)]:
            assert "not fixed yet" in str(handle.exception(WAIT))
        listed = run_cli("redis", redis_url, "--dead", "--namespace", namespace)
        assert listed.stdout.startswith("2 dead letter(s)")
        assert "    ValueError: not fixed yet: 1\n" in listed.stdout
        # When it is fixed and the dead letters are requeued
        client.set(log_key(namespace, "fixed"), "1")
        requeued = run_cli("redis", redis_url, "requeue-dead", "--yes", "--namespace", namespace)
        assert requeued.stdout.startswith("requeued 2 dead letter(s)")
        # Then the worker runs them, and none is dead any more
        assert {pop(client, namespace, "flaky") for _ in range(2)} == {"1", "2"}
        assert summary(redis_url, namespace)["dead"] == 0
    finally:
        queue.shutdown(cancel_futures=True, timeout=1)
    assert worker.stop() == EXIT_OK
