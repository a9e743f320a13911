"""Tests of ``python -m taskqueue journal``: the summary, dead letters, requeue, purge, errors."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, List

import pytest

from taskqueue import Journal, TaskQueue
from taskqueue.cli import EXIT_OK, EXIT_USAGE, main

from conftest import Gate

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def journal_file(tmp_path: Path) -> str:
    """A journal with 2 pending, 1 scheduled, 1 running (at a crash) and 3 dead tasks."""
    path = str(tmp_path / "tasks.db")
    journal = Journal(path)
    for index in range(7):
        journal.record_submit(f"t{index}", "mail" if index < 5 else "sms", "[1]", "{}", {})
    journal.record_retry("t2", 1, 4_000_000_000.0)
    journal.record_started("t3", 1)
    for task_id in ("t4", "t5", "t6"):
        journal.record_dead(task_id, 4, f"ValueError: bad {task_id}", "Traceback ...", 1_700_000_000.0)
    journal.close()
    return path


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(argv: List[str], capsys: pytest.CaptureFixture[str]) -> tuple:
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_the_summary_counts_every_state(journal_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(["journal", journal_file], capsys)

    assert (status, err) == (EXIT_OK, "")
    assert journal_file in out
    lines = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()[1:]}
    assert lines == {"pending": 2, "scheduled": 1, "running-at-crash": 1, "dead": 3}


def test_dead_lists_the_dead_letters_with_their_errors(
        journal_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(["journal", journal_file, "--dead"], capsys)
    assert status == EXIT_OK
    assert out.startswith("3 dead letter(s)")
    for task_id in ("t4", "t5", "t6"):
        assert task_id in out and f"ValueError: bad {task_id}" in out

    status, out, _ = run(["journal", journal_file, "--dead", "--name", "sms"], capsys)
    assert out.startswith("2 dead letter(s)") and "t4" not in out


def test_requeue_dead_by_name_makes_them_pending_again(
        journal_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(["journal", journal_file, "requeue-dead", "--name", "sms"], capsys)

    assert status == EXIT_OK and "requeued 2" in out
    journal = Journal(journal_file)
    try:
        assert journal.counts() == {"pending": 4, "scheduled": 1, "running": 1, "dead": 1}
        assert {row.attempts for row in journal.recover() if row.name == "sms"} == {0}
    finally:
        journal.close()


def test_requeued_dead_letters_run_on_the_next_start(
        journal_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["journal", journal_file, "requeue-dead"], capsys)[0] == EXIT_OK
    ran: List[object] = []
    all_ran = threading.Event()

    def record(x: object) -> None:
        ran.append(x)
        if len(ran) == 6:  # all but the one scheduled far ahead
            all_ran.set()

    queue = TaskQueue(journal=journal_file, workers=1)
    queue.task(name="mail")(record)
    queue.task(name="sms", retries=0)(record)
    queue.start()
    try:
        assert all_ran.wait(20)
        assert queue.recovered == 7 and queue.dead_letters() == []
    finally:
        queue.shutdown(cancel_futures=True)


def test_purge_dead_deletes_them_all(journal_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(["journal", journal_file, "purge-dead"], capsys)
    assert status == EXIT_OK and "purged 3" in out
    assert run(["journal", journal_file], capsys)[1].splitlines()[-1].split() == ["dead", "0"]


@pytest.mark.parametrize("action", ["requeue-dead", "purge-dead"])
def test_on_a_terminal_changes_need_yes(journal_file: str, action: str,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)

    status = main(["journal", journal_file, action])

    err = capsys.readouterr().err
    assert status == EXIT_USAGE
    assert err.count("\n") == 1 and "--yes" in err
    assert main(["journal", journal_file, action, "--yes"]) == EXIT_OK
    assert "3 dead letter(s)" in terminal.getvalue()


def test_a_missing_file_is_an_error_and_is_not_created(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.db"
    status, out, err = run(["journal", str(missing)], capsys)
    assert status == EXIT_USAGE and out == ""
    assert err.count("\n") == 1 and str(missing) in err
    assert not missing.exists()


@pytest.mark.parametrize("content", [b"not a journal at all", b""])
def test_an_invalid_file_is_an_error_and_is_left_as_it_was(
        tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "other"
    path.write_bytes(content)
    status, out, err = run(["journal", str(path)], capsys)
    assert status == EXIT_USAGE and out == ""
    assert err.count("\n") == 1 and str(path) in err and "not a taskqueue journal" in err
    assert path.read_bytes() == content  # an empty file is not turned into a journal
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]


def test_a_journal_in_use_can_be_looked_at_but_not_changed(
        journal_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    queue = TaskQueue(journal=journal_file)
    try:
        looked, out, _ = run(["journal", journal_file], capsys)
        changed, _, err = run(["journal", journal_file, "purge-dead", "--yes"], capsys)
    finally:
        queue.shutdown()
    assert looked == EXIT_OK and "dead" in out
    assert changed == EXIT_USAGE
    assert err.count("\n") == 1 and "in use" in err and journal_file in err
    status, out, _ = run(["journal", journal_file], capsys)
    assert "dead              3" in out  # the refused purge changed nothing


def test_looking_changes_not_a_byte_of_the_file(journal_file: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    before = (Path(journal_file).read_bytes(), os.stat(journal_file).st_mtime_ns)
    assert run(["journal", journal_file], capsys)[0] == EXIT_OK
    assert run(["journal", journal_file, "--dead"], capsys)[0] == EXIT_OK
    assert (Path(journal_file).read_bytes(), os.stat(journal_file).st_mtime_ns) == before


def test_a_corrupt_journal_is_one_line_and_exit_2(tmp_path: Path) -> None:
    # Given a journal whose b-tree pages are damaged where quick_check looks
    path = tmp_path / "corrupt.db"
    journal = Journal(str(path))
    for index in range(300):
        journal.record_submit(f"t{index}", "job", '["' + "p" * 200 + '"]', "{}", {})
    journal.close()
    data = path.read_bytes()
    found = None
    for page in range(1, len(data) // 4096):
        damaged = bytearray(data)
        damaged[page * 4096 + 100: page * 4096 + 140] = bytes(range(40))
        path.write_bytes(bytes(damaged))
        result = subprocess.run([sys.executable, "-m", "taskqueue", "journal", str(path)],
                                cwd=ROOT, capture_output=True, text=True, timeout=30)
        if result.returncode == EXIT_USAGE and "corrupt" in result.stderr:
            found = result
            break
    assert found is not None, "no damage that quick_check reports"
    # Then the error is one line, without a traceback
    assert len(found.stderr.strip().splitlines()) == 1, found.stderr
    assert "Traceback" not in found.stderr and str(path) in found.stderr


def test_dead_with_a_failure_time_that_is_not_a_time_lists_without_a_traceback(
        journal_file: str) -> None:
    conn = sqlite3.connect(journal_file)
    conn.execute("UPDATE tasks SET failed_at = 1e20 WHERE id = 't4'")
    conn.execute("UPDATE tasks SET failed_at = 'yesterday' WHERE id = 't5'")
    conn.commit()
    conn.close()
    result = subprocess.run([sys.executable, "-m", "taskqueue", "journal", journal_file, "--dead"],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == EXIT_OK, result.stderr
    assert "Traceback" not in result.stderr
    assert "3 dead letter(s)" in result.stdout
    assert result.stdout.count("failed ?") == 2
    assert result.stdout.count("damaged row") == 2


def test_dead_and_an_action_do_not_go_together(journal_file: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(["journal", journal_file, "purge-dead", "--dead"], capsys)
    assert status == EXIT_USAGE and err.count("\n") == 1


def test_the_command_runs_as_a_module_without_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "taskqueue", "journal", str(tmp_path / "x")],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "no such journal file" in result.stderr


# -- the demo with --journal ---------------------------------------------------------------

def test_the_demo_killed_with_sigkill_finishes_the_rest_on_the_next_run(tmp_path: Path) -> None:
    # Given a demo run on a journal, killed once it has started submitting
    journal = str(tmp_path / "demo.db")
    argv = [sys.executable, "-m", "taskqueue", "demo", "--journal", journal,
            "--bookings", "300", "--failure-rate", "0", "--seed", "3"]
    first = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        for line in first.stdout:  # type: ignore[union-attr]
            if line.startswith("done "):  # the first booking is submitted
                break
        else:
            raise AssertionError(first.stderr.read())  # type: ignore[union-attr]
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL

    # When it runs again on the same journal
    second = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)

    # Then it sends what was left, and the journal is empty
    assert second.returncode == 0, second.stderr
    recovered = re.search(r"Recovered (\d+) unfinished email", second.stdout)
    assert recovered, second.stdout
    count = int(recovered.group(1))
    assert 1 <= count <= 300
    assert re.search(rf"^  succeeded +{count}$", second.stdout, re.MULTILINE), second.stdout
    journal_file = Journal(journal)
    try:
        assert sum(journal_file.counts().values()) == 0
    finally:
        journal_file.close()


def test_the_demo_with_a_fresh_journal_says_there_is_nothing_to_recover(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = str(tmp_path / "demo.db")
    status = main(["demo", "--journal", journal, "--bookings", "20", "--failure-rate", "1",
                   "--seed", "1"])
    out = capsys.readouterr().out
    assert status == EXIT_OK
    assert "Nothing to recover" in out and "Dead letters: 20" in out
    journal_file = Journal(journal)
    try:
        assert journal_file.counts()["dead"] == 20
    finally:
        journal_file.close()


def test_the_demo_on_a_journal_in_use_is_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = str(tmp_path / "demo.db")
    queue = TaskQueue(journal=journal)
    try:
        status = main(["demo", "--journal", journal, "--bookings", "5"])
    finally:
        queue.shutdown()
    err = capsys.readouterr().err
    assert status == EXIT_USAGE
    assert err.count("\n") == 1 and "in use" in err


def test_damaged_lists_the_rows_that_make_a_file_corrupt(journal_file: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    conn = sqlite3.connect(journal_file)
    conn.execute("UPDATE tasks SET attempts = 'abc' WHERE id = 't0'")
    conn.commit()
    conn.close()
    status, out, err = run(["journal", journal_file], capsys)
    assert status == EXIT_OK and "damaged           1" in out
    status, out, err = run(["journal", journal_file, "--damaged"], capsys)
    assert status == EXIT_OK, err
    assert "1 damaged row(s)" in out and "t0" in out and "attempts" in out
    status, _, err = run(["journal", journal_file, "purge-dead", "--yes"], capsys)
    assert status == EXIT_USAGE and err.count("\n") == 1 and "corrupt" in err


@pytest.mark.timeout(60)
def test_the_summary_of_a_live_journal_says_running_and_names_its_owner(
        tmp_path: Any, capsys: pytest.CaptureFixture[str], gate: Gate) -> None:
    path = str(tmp_path / "live.db")
    queue = TaskQueue(workers=1, journal=path)
    hold = queue.task(gate.wait, name="hold")
    with queue:
        hold.submit()
        gate.wait_for_arrivals(1)
        queue.broker.journal.flush()  # type: ignore[attr-defined]

        status, out, err = run(["journal", path], capsys)

        assert (status, err) == (EXIT_OK, "")
        rows = dict(line.split(None, 1) for line in out.splitlines()[1:])
        assert rows["running"].strip() == "1" and "running-at-crash" not in rows
        assert rows["owner"].startswith(f"{socket.gethostname()}:{os.getpid()}, 1 worker(s)")
        gate.open()
