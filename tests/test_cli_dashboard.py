"""Tests of ``python -m taskqueue dashboard``: serving a journal or a Redis queue, and errors."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from conftest import WAIT
from taskqueue import Journal, RedisBroker, TaskFailed, TaskQueue
from taskqueue.cli import EXIT_OK, EXIT_USAGE, main

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"taskqueue dashboard for (?P<name>.+) at (?P<url>http://127\.0\.0\.1:\d+/) "
                  r"\((?P<mode>read-only|actions need the token)\)\n")

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def journal_file(tmp_path: Path) -> str:
    """A journal with one pending task and one dead letter."""
    path = str(tmp_path / "tasks.db")
    journal = Journal(path)
    journal.record_submit("t1", "mail", "[1]", "{}", {})
    journal.record_submit("t2", "mail", "[2]", "{}", {})
    journal.record_dead("t2", 3, "ValueError: bad address", "Traceback ...", 1_700_000_000.0)
    journal.close()
    return path


class Served:
    """A ``taskqueue dashboard`` child process, its printed line parsed."""

    def __init__(self, args: List[str], env: Optional[Dict[str, str]] = None) -> None:
        environment = dict(os.environ, PYTHONPATH=str(ROOT))
        environment.pop("TASKQUEUE_DASHBOARD_TOKEN", None)
        environment.update(env or {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "taskqueue", "dashboard", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
            cwd=str(ROOT))
        assert self.process.stdout is not None
        self.line = self.process.stdout.readline()
        match = LINE.fullmatch(self.line)
        if match is None:
            self.stop()
            pytest.fail(f"unexpected first line {self.line!r}; stderr: {self.stderr!r}")
        self.name, self.url, self.mode = match["name"], match["url"], match["mode"]

    def get(self, path: str) -> Tuple[int, Any]:
        return _call(urllib.request.Request(self.url + path.lstrip("/")))

    def post(self, path: str, token: Optional[str]) -> Tuple[int, Any]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return _call(urllib.request.Request(self.url + path.lstrip("/"), data=b"",
                                            headers=headers, method="POST"))

    def stop(self, number: int = signal.SIGTERM) -> int:
        """Signal it, and return its exit status (its output is kept)."""
        if self.process.poll() is None:
            self.process.send_signal(number)
        try:
            out, err = self.process.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
        self.stdout, self.stderr = out, err
        return self.process.returncode


def _call(req: urllib.request.Request) -> Tuple[int, Any]:
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


@pytest.fixture
def served() -> Iterator[Any]:
    """Start ``taskqueue dashboard ARGS``; every one started is stopped afterwards."""
    started: List[Served] = []

    def start(*args: str, env: Optional[Dict[str, str]] = None) -> Served:
        child = Served(list(args), env)
        started.append(child)
        return child

    yield start
    for child in started:
        child.stop(signal.SIGKILL)


# -- serving --------------------------------------------------------------------------

@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_journal_is_served_read_only_until_signalled(journal_file: str, served: Any,
                                                       number: int) -> None:
    child = served("--journal", journal_file)
    assert (child.name, child.mode) == (journal_file, "read-only")

    status, stats = child.get("/api/stats")
    assert status == 200
    assert stats["pending"] == 1 and stats["dead_letters"] == 1
    status, dead = child.get("/api/dead")
    assert dead["count"] == 1 and dead["dead_letters"][0]["task_id"] == "t2"

    assert child.stop(number) == EXIT_OK
    assert child.stdout == "" and child.stderr == ""  # no access log, no traceback


def test_a_journal_with_a_token_is_still_read_only(journal_file: str, served: Any) -> None:
    child = served("--journal", journal_file, "--token", "tok")
    assert child.mode == "read-only"
    assert child.get("/api/config") == (200, {"name": journal_file, "actions": False,
                                              "refresh_seconds": 1})
    status, body = child.post("/api/dead/purge", "tok")
    assert status == 409 and "changed only by the program that owns it" in body["error"]
    assert child.post("/api/dead/purge", None)[0] == 403
    assert child.stop() == EXIT_OK


def test_a_queue_in_redis_is_served_with_actions_by_the_token_from_the_environment(
        redis_url: str, namespace: str, served: Any) -> None:
    child = served("--broker", redis_url, "--namespace", namespace,
                   env={"TASKQUEUE_DASHBOARD_TOKEN": "from-env"})
    assert child.mode == "actions need the token"
    assert "from-env" not in " ".join(child.process.args)  # not in ps
    assert child.get("/api/config") == (200, {"name": namespace, "actions": True,
                                              "refresh_seconds": 1})
    status, stats = child.get("/api/stats")
    assert status == 200 and stats["submitted"] == 0 and stats["workers"] == 0
    assert child.post("/api/dead/purge", "wrong")[0] == 403
    assert child.post("/api/dead/purge", "from-env") == (200, {"purged": 0})
    assert child.stop() == EXIT_OK
    assert child.stderr == ""


def test_a_queue_in_redis_shows_the_dead_letters_of_its_programs(
        redis_url: str, namespace: str, served: Any) -> None:
    # Given a program (here, this test's process) whose task failed on Redis
    program = TaskQueue(broker=RedisBroker(redis_url, namespace=namespace), workers=1,
                        name="program")
    try:
        @program.task
        def broken(address: str) -> None:
            raise ValueError(f"bad address {address}")

        program.start()
        handle = broken.submit("a@b")
        with pytest.raises(TaskFailed):
            handle.result(WAIT)

        # Then the dashboard, another process, lists it with its error
        child = served("--broker", redis_url, "--namespace", namespace)
        status, dead = child.get("/api/dead")
        assert status == 200 and dead["count"] == 1
        letter = dead["dead_letters"][0]
        assert letter["task_id"] == handle.id and letter["name"].endswith("broken")
        assert letter["error"] == "ValueError: bad address a@b"
        assert "bad address a@b" in letter["traceback"]
        status, stats = child.get("/api/stats")
        assert stats["failed"] == 1 and stats["dead_letters"] == 1
        assert child.stop() == EXIT_OK
    finally:
        program.shutdown(timeout=WAIT)


def test_a_queue_in_redis_without_a_token_is_read_only(redis_url: str, namespace: str,
                                                       served: Any) -> None:
    child = served("--broker", redis_url, "--namespace", namespace)
    assert child.mode == "read-only"
    assert child.post("/api/dead/purge", "anything")[0] == 403
    assert child.stop() == EXIT_OK


# -- errors -------------------------------------------------------------------------------

def run(argv: List[str], capsys: Any) -> Tuple[int, str, str]:
    code = main(["dashboard", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert err.startswith("taskqueue dashboard: error: "), err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize("argv, fragment", [
    ([], "one of the arguments --journal --broker is required"),
    (["--journal", "a.db", "--broker", "redis://127.0.0.1:6379/0"], "not allowed with"),
    (["--journal", "a.db", "--port", "65536"], "65536"),
    (["--journal", "a.db", "--port", "http"], "'http'"),
    (["--journal", "a.db", "--namespace", "x"], "--namespace goes with --broker"),
])
def test_a_wrong_command_line_is_one_line_and_exit_2(argv: List[str], fragment: str,
                                                     capsys: Any) -> None:
    code, out, err = run(argv, capsys)
    assert code == EXIT_USAGE and out == ""
    assert_one_line_error(err, fragment)


def test_a_missing_journal_is_an_error(tmp_path: Path, capsys: Any) -> None:
    code, out, err = run(["--journal", str(tmp_path / "none.db"), "--port", "0"], capsys)
    assert code == EXIT_USAGE and out == ""
    assert_one_line_error(err, "no such journal file")


def test_a_file_that_is_not_a_journal_is_an_error(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database\n")
    code, out, err = run(["--journal", str(path), "--port", "0"], capsys)
    assert code == EXIT_USAGE and out == ""
    assert_one_line_error(err, "not a taskqueue journal")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3"])
def test_a_public_address_without_a_token_is_refused(journal_file: str, host: str,
                                                     capsys: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKQUEUE_DASHBOARD_TOKEN", raising=False)
    code, out, err = run(["--journal", journal_file, "--host", host, "--port", "0"], capsys)
    assert code == EXIT_USAGE and out == ""
    assert_one_line_error(err, "not a loopback address", "token")


def test_a_port_in_use_is_an_error(journal_file: str, capsys: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run(["--journal", journal_file, "--port", str(port)], capsys)
    assert code == EXIT_USAGE and out == ""
    assert_one_line_error(err, f"cannot listen on 127.0.0.1:{port}", "in use")


def test_an_empty_token_is_an_error(journal_file: str, capsys: Any) -> None:
    code, out, err = run(["--journal", journal_file, "--port", "0", "--token", ""], capsys)
    assert code == EXIT_USAGE
    assert_one_line_error(err, "token")


def test_a_bad_broker_url_is_an_error(capsys: Any) -> None:
    pytest.importorskip("redis")
    code, out, err = run(["--broker", "http://127.0.0.1:6379/0", "--port", "0"], capsys)
    assert code == EXIT_USAGE and out == ""
    assert_one_line_error(err, "not a Redis URL")


def test_an_unreachable_server_is_an_error_that_never_shows_the_password(capsys: Any) -> None:
    pytest.importorskip("redis")
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"redis://:hunter2@127.0.0.1:{port}/0?password=hunter2"
    code, out, err = run(["--broker", url, "--port", "0"], capsys)
    assert code == EXIT_USAGE and out == ""
    assert_one_line_error(err, "cannot be used", "***")
    assert "hunter2" not in err


def test_without_redis_py_the_error_says_what_to_install() -> None:
    code = ("import sys; sys.modules['redis'] = None\n"
            "from taskqueue.cli import main\n"
            "sys.exit(main(['dashboard', '--broker', 'redis://127.0.0.1:6379/0', "
            "'--port', '0']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=WAIT, cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == EXIT_USAGE and done.stdout == ""
    assert_one_line_error(done.stderr, "pip install 'taskqueue[redis]'")
