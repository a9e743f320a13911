"""The demo on Redis, as a program: ``python -m taskqueue demo --broker URL``.

Each test runs the demo as a child of its own on the shared Redis, with a
marker in its environment that its worker processes inherit: whatever
carries the marker once the demo has ended is a process left behind. The
demo prints its namespace and its workers' pids; the tests check that the
workers are gone and that no key of the namespace is left. Nothing sleeps:
the tests read the demo's output as it comes and wait for processes to end.

The run tests skip without Redis (fail under TASKQUEUE_REQUIRE_REDIS=1);
the refusals need at most redis-py. The workers' task (in
:mod:`taskqueue.demo_redis`) is also called directly, which needs neither.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

from conftest import need_redis
from taskqueue.demo import MailServerError
from taskqueue.demo_redis import send_confirmation
from test_demo import replay

pytestmark = pytest.mark.timeout(40)

ROOT = Path(__file__).resolve().parent.parent
MARK = "TASKQUEUE_TEST_DEMO_RUN"  # inherited by the demo's worker processes
RUN_TIMEOUT = 30  # seconds a whole demo run may take here


# -- helpers --------------------------------------------------------------------------------

def stat(output: str, name: str) -> int:
    """The number on the ``name`` line of the Stats section."""
    match = re.search(rf"^  {name} +(\d+)$", output, re.MULTILINE)
    assert match, f"no {name!r} line in:\n{output}"
    return int(match.group(1))


def namespace_of(output: str) -> str:
    match = re.search(r"namespace (taskqueue-demo-\w+) \(deleted at the end\)", output)
    assert match, f"no namespace in:\n{output}"
    return match.group(1)


def consuming_pids(line: str) -> List[int]:
    match = re.match(r"Worker processes (\d+) and (\d+) are consuming$", line.strip())
    assert match, line
    return [int(match.group(1)), int(match.group(2))]


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie has ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return fields[0] != "Z"


def wait_until_gone(pid: int, timeout: float) -> None:
    """Wait for a process that is not this one's child to end (a pidfd: no polling)."""
    if not hasattr(os, "pidfd_open"):
        pytest.skip("waiting for a process that is not a child needs os.pidfd_open (Linux)")
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # gone already
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    assert readable, f"process {pid} was still running {timeout}s after the demo was killed"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Runs:
    """Runs of the demo by one test, and what they might leave behind, cleared at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.folder = tmp_path
        self.marker = uuid.uuid4().hex
        self.namespaces: List[str] = []
        self._started: Optional[subprocess.Popen[str]] = None
        path = [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        self._env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), **{MARK: self.marker})
        for name in ("TASKQUEUE_DEMO_BROKER", "TASKQUEUE_DEMO_NAMESPACE"):
            self._env.pop(name, None)  # the demo sets these for its workers alone

    def command(self, *args: str) -> List[str]:
        return [sys.executable, "-m", "taskqueue", *args]

    def run(self, *args: str, pythonpath: str = "") -> subprocess.CompletedProcess[str]:
        """Run one command to its end (from a folder of its own: nothing found by chance)."""
        env = dict(self._env)
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join([pythonpath, env["PYTHONPATH"]])
        done = subprocess.run(self.command(*args), cwd=self.folder, env=env, capture_output=True,
                              text=True, timeout=RUN_TIMEOUT)
        self._note(done.stdout)
        return done

    def start(self, *args: str) -> Tuple[subprocess.Popen[str], List[int]]:
        """Start the demo in a session of its own (as a shell runs a job); return it and its
        workers' pids once it says they are consuming."""
        demo = subprocess.Popen(self.command("demo", *args), cwd=self.folder, env=self._env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        self._started = demo
        seen = []
        for line in demo.stdout:  # type: ignore[union-attr]
            seen.append(line)
            self._note(line)
            if "are consuming" in line:
                return demo, consuming_pids(line)
        demo.wait(RUN_TIMEOUT)
        raise AssertionError(f"the demo ended before its workers consumed:\n{''.join(seen)}"
                             f"{demo.stderr.read()}")  # type: ignore[union-attr]

    def left_behind(self) -> List[int]:
        """The live processes that carry this test's marker (none found without /proc)."""
        found = []
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"{MARK}={self.marker}".encode() in environ and alive(int(entry.name)):
                found.append(int(entry.name))
        return found

    def keys(self, namespace: str, *, delete: bool = False) -> List[bytes]:
        """The keys of ``namespace`` in the shared Redis (deleted, with ``delete``)."""
        import redis

        client = redis.Redis.from_url(need_redis())
        try:
            found = list(client.scan_iter(match="{%s}*" % namespace, count=1000))
            if found and delete:
                client.delete(*found)
            return found
        finally:
            client.close()

    def clear(self) -> None:
        """Kill what is left of this test's runs, and delete their namespaces' keys."""
        for pid in self.left_behind():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._started is not None and self._started.poll() is None:
            self._started.kill()
            self._started.communicate()
        for namespace in self.namespaces:
            self.keys(namespace, delete=True)

    def _note(self, output: str) -> None:
        found = re.search(r"namespace (taskqueue-demo-\w+) ", output)
        if found and found.group(1) not in self.namespaces:
            self.namespaces.append(found.group(1))


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Runs]:
    """This test's runs of the demo; at teardown, whatever they left is killed and deleted."""
    made = Runs(tmp_path)
    yield made
    made.clear()


@pytest.fixture
def no_redis_py(tmp_path: Path) -> str:
    """A folder that, first on PYTHONPATH, makes ``import redis`` fail as if redis-py were
    not installed."""
    folder = tmp_path / "no-redis-py"
    (folder / "redis").mkdir(parents=True)
    (folder / "redis" / "__init__.py").write_text(
        "raise ImportError('redis-py is hidden from this test')\n")
    return str(folder)


def assert_nothing_left(runs: Runs, pids: List[int], namespace: str) -> None:
    assert [pid for pid in pids if alive(pid)] == []
    assert runs.left_behind() == []
    assert runs.keys(namespace) == []


# -- whole runs -----------------------------------------------------------------------------

@pytest.mark.parametrize("failure_rate", ["0.2", "0.5"])
def test_demo_sends_every_booking_from_two_worker_processes_and_leaves_nothing(
        runs: Runs, failure_rate: str) -> None:
    # When the demo runs 60 bookings through Redis
    done = runs.run("demo", "--broker", need_redis(), "--bookings", "60", "--seed", "1",
                    "--failure-rate", failure_rate)
    out = done.stdout

    # Then it succeeded, quietly
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    # ... the numbers add up, and are the seed's: the same as in one process
    expected_dead, expected_retries = replay(float(failure_rate), seed=1, bookings=60)
    assert stat(out, "submitted") == 60
    assert stat(out, "succeeded") + stat(out, "failed") == 60
    assert stat(out, "failed") == len(expected_dead)
    assert stat(out, "retried") == expected_retries
    assert stat(out, "cancelled") == 0
    # ... the dead letters are listed with their reasons and where they failed
    pids = consuming_pids(re.search(r"^Worker processes .* consuming$", out, re.MULTILINE)[0])
    assert f"\nDead letters: {len(expected_dead)}\n" in out
    listed = re.findall(r"^  booking (\d+): 4 attempts, MailServerError: mail server did not "
                        r"accept the message \(booking \1, attempt 4\) in worker process (\d+)$",
                        out, re.MULTILINE)
    assert [int(booking) for booking, _ in listed] == expected_dead[:5]
    assert {int(pid) for _, pid in listed} <= set(pids)
    # ... both workers are in the summary, the emails each sent add up, and both exited 0
    rows = re.findall(r"^  pid (\d+): (\d+) sent, exit status (-?\d+)$", out, re.MULTILINE)
    assert sorted(int(pid) for pid, _, _ in rows) == sorted(pids)
    assert sum(int(sent) for _, sent, _ in rows) == stat(out, "succeeded")
    assert [status for _, _, status in rows] == ["0", "0"]
    # ... and no process and no key is left
    assert_nothing_left(runs, pids, namespace_of(out))


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_demo_stops_its_workers_and_deletes_its_keys(
        runs: Runs, how: signal.Signals) -> None:
    # Given a demo whose workers consume, with far more bookings than it sends at once
    demo, pids = runs.start("--broker", need_redis(), "--bookings", "5000", "--seed", "2")

    # When Ctrl-C reaches its process group (as on a terminal), or `kill` reaches it
    os.killpg(demo.pid, how)
    out, err = demo.communicate(timeout=RUN_TIMEOUT)

    # Then it stopped as an interrupted command does, its workers with it
    assert demo.returncode == 130, err
    assert err == "taskqueue: interrupted\n"
    assert "Stats" not in out
    assert_nothing_left(runs, pids, runs.namespaces[0])


def test_workers_stop_themselves_when_the_demo_is_killed(runs: Runs) -> None:
    # Given a demo whose workers consume
    demo, pids = runs.start("--broker", need_redis(), "--bookings", "5000", "--seed", "3")

    # When it is killed outright (it cannot stop anything)
    demo.kill()
    demo.communicate(timeout=RUN_TIMEOUT)

    # Then its workers see their pipe to it close, and stop
    for pid in pids:
        wait_until_gone(pid, timeout=RUN_TIMEOUT)
    assert runs.left_behind() == []  # its keys stay: the fixture deletes them


# -- refusals: one line, exit status 2, nothing started --------------------------------------

def assert_refused(runs: Runs, done: subprocess.CompletedProcess[str], mentions: str) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith("taskqueue demo: error: ")
    assert done.stderr.count("\n") == 1 and done.stderr.endswith("\n"), done.stderr
    assert mentions in done.stderr
    assert "Traceback" not in done.stderr
    assert runs.left_behind() == []


def test_broker_with_journal_is_refused(runs: Runs, tmp_path: Path) -> None:
    done = runs.run("demo", "--broker", "redis://127.0.0.1:6379/0",
                    "--journal", str(tmp_path / "demo.journal"))
    assert_refused(runs, done, "--journal")
    assert not (tmp_path / "demo.journal").exists()


def test_unreachable_redis_is_refused_naming_the_server_not_its_password(runs: Runs) -> None:
    pytest.importorskip("redis")
    port = free_port()
    done = runs.run("demo", "--broker", f"redis://:secret-word@127.0.0.1:{port}/0")
    assert_refused(runs, done, "cannot be used")
    assert f"127.0.0.1:{port}" in done.stderr
    assert "secret-word" not in done.stderr


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379/0", "redis://127.0.0.1:port/0"])
def test_a_url_redis_py_does_not_take_is_refused(runs: Runs, url: str) -> None:
    pytest.importorskip("redis")
    assert_refused(runs, runs.run("demo", "--broker", url), "not a Redis URL")


def test_without_redis_py_the_demo_on_redis_says_what_to_install(
        runs: Runs, no_redis_py: str) -> None:
    done = runs.run("demo", "--broker", "redis://127.0.0.1:6379/0", pythonpath=no_redis_py)
    assert_refused(runs, done, "pip install 'taskqueue[redis]'")


def test_the_in_memory_demo_needs_no_redis_py(runs: Runs, no_redis_py: str) -> None:
    done = runs.run("demo", "--bookings", "20", "--seed", "1", pythonpath=no_redis_py)
    assert done.returncode == 0, done.stderr
    assert "Dead letters: " in done.stdout
    assert "Worker processes" not in done.stdout


def test_the_demos_worker_queue_outside_the_demo_is_refused_in_one_line(runs: Runs) -> None:
    done = runs.run("worker", "taskqueue.demo_redis:worker_queue")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "TASKQUEUE_DEMO_BROKER is not set" in done.stderr


# -- the task, called directly ----------------------------------------------------------------

def test_the_task_of_the_demo_on_redis_says_where_it_ran() -> None:
    # Called directly, outside a worker, it is a first attempt
    assert send_confirmation(4, 0.0, 1) == {"receipt": "confirmation for booking 4 sent",
                                            "pid": os.getpid()}
    with pytest.raises(MailServerError, match=rf"attempt 1\) in worker process {os.getpid()}$"):
        send_confirmation(4, 1.0, 1)
