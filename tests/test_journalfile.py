"""Tests of taskqueue.journalfile: owning a journal file, opening without writing, checked rows."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from taskqueue import JournalError, JournalLocked, JournalView, TaskQueue
from taskqueue.journal import SCHEMA_VERSION, Journal
from taskqueue.journalfile import decode_row

pytestmark = pytest.mark.timeout(120)

WAIT_SECONDS = 20.0


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "tasks.db")


def snapshot(folder: Path) -> Dict[str, Tuple[bytes, int]]:
    """Every file in ``folder`` with its bytes and modification time.

    Leaves out SQLite's ``-shm`` file: the write-ahead log's index in shared
    memory, which every reader rebuilds and which holds no data.
    """
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()
            if p.is_file() and not p.name.endswith("-shm")}


def make_journal_with_rows(path: str) -> None:
    """A journal holding one pending task and one dead letter, left as a shutdown leaves it."""
    journal = Journal(path)
    journal.record_submit("a1", "job", "[1]", "{}", {})
    journal.record_submit("d1", "job", "[2]", "{}", {})
    journal.record_dead("d1", 1, "ValueError: boom", "Traceback ...", time.time())
    journal.close()


# -- ownership ----------------------------------------------------------------------------

OPENER = textwrap.dedent("""
    import sys, time
    from taskqueue.journal import Journal
    from taskqueue import JournalLocked
    path, go = sys.argv[1], float(sys.argv[2])
    while time.time() < go:
        pass
    try:
        journal = Journal(path)
    except JournalLocked:
        print("LOCKED", flush=True)
    else:
        print("OPENED", flush=True)
        sys.stdin.read()  # hold it until the test has seen both answers
        journal.close()
""")


@pytest.mark.parametrize("fresh", [False, True], ids=["existing file", "new file"])
def test_of_two_processes_opening_at_once_exactly_one_owns_the_journal(tmp_path: Path,
                                                                       fresh: bool) -> None:
    # Twelve rounds of two processes racing for one file: SQLite's own locks
    # let both fail (each saw the other's brief lock); the owner lock never does.
    for round_ in range(12):
        path = str(tmp_path / f"j{round_}.db")
        if not fresh:
            Journal(path).close()
        go = time.time() + 0.4
        children = [subprocess.Popen([sys.executable, "-c", OPENER, path, str(go)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                    for _ in range(2)]
        answers = sorted(child.stdout.readline().strip() for child in children)  # type: ignore[union-attr]
        for child in children:
            child.communicate("", timeout=30)
        assert answers == ["LOCKED", "OPENED"], f"round {round_}: {answers}"


def test_a_second_owner_in_the_same_process_is_locked_out_and_the_first_keeps_working(
        path: str) -> None:
    first = Journal(path)
    try:
        for _ in range(3):
            with pytest.raises(JournalLocked, match="in use"):
                Journal(path)
        first.record_submit("t1", "job", "[]", "{}", {})
        assert [row.id for row in first.recover()] == ["t1"]
    finally:
        first.close()
    Journal(path).close()  # released on close


def test_a_forked_child_does_not_keep_the_journal_locked_after_its_parent_lets_go(
        path: str) -> None:
    journal = Journal(path)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child outlives the parent's hold on the file
        os.close(write_end)
        os.read(read_end, 1)
        try:
            Journal(path).close()
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(read_end)
    journal.close()
    os.write(write_end, b"x")
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


# -- opening is not writing -------------------------------------------------------------------

def test_an_empty_file_is_refused_and_left_as_it_was(tmp_path: Path, path: str) -> None:
    Path(path).touch()
    before = snapshot(tmp_path)

    with pytest.raises(JournalError, match="empty file") as caught:
        Journal(path)
    with pytest.raises(JournalError, match="empty file"):
        JournalView(path)

    assert path in str(caught.value)
    assert snapshot(tmp_path) == before


def test_a_sqlite_file_of_another_program_without_tables_is_refused_untouched(
        tmp_path: Path, path: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 7")  # a header written, no table
    conn.close()
    before = snapshot(tmp_path)

    with pytest.raises(JournalError, match="another application"):
        Journal(path)

    assert snapshot(tmp_path) == before


def test_a_dangling_symlink_is_refused_and_its_target_not_created(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.db"
    link = tmp_path / "tasks.db"
    link.symlink_to(target)

    with pytest.raises(JournalError, match="symbolic link"):
        Journal(str(link))
    with pytest.raises(JournalError):
        TaskQueue(journal=str(link))

    assert not target.exists()


def test_a_newer_file_with_a_write_ahead_log_is_refused_and_its_log_left_alone(
        tmp_path: Path, path: str) -> None:
    # Given a newer program's journal with commits still in its -wal file
    # (the program was killed before SQLite checkpointed them)
    Journal(path).close()
    script = textwrap.dedent(f"""
        import os, sqlite3
        conn = sqlite3.connect({path!r})
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.execute("INSERT INTO tasks (id, name, args, kwargs, options, state, attempts, due, submitted_at, error, traceback, failed_at) VALUES ('x', 'job', '[]', '{{}}', '{{}}', 'pending', 0, NULL, 1.0, NULL, NULL, NULL)")
        conn.commit()
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    assert os.path.getsize(path + "-wal") > 0
    before = snapshot(tmp_path)

    with pytest.raises(JournalError, match="newer"):
        Journal(path)

    assert snapshot(tmp_path) == before


def test_a_view_reads_without_changing_a_byte_or_a_time(tmp_path: Path, path: str) -> None:
    make_journal_with_rows(path)
    before = snapshot(tmp_path)

    with JournalView(path) as view:
        counts = view.counts()
        dead = view.dead()

    assert counts == {"pending": 1, "scheduled": 0, "running": 0, "dead": 1}
    assert [row.id for row in dead] == ["d1"]
    after = snapshot(tmp_path)
    assert after[Path(path).name] == before[Path(path).name]


def test_a_view_reads_while_the_owner_writes(path: str) -> None:
    owner = Journal(path)
    try:
        owner.record_submit("t1", "job", "[]", "{}", {})
        with JournalView(path) as view:
            assert view.counts()["pending"] == 1
            owner.record_submit("t2", "job", "[]", "{}", {})
            assert view.counts()["pending"] == 2
    finally:
        owner.close()


def test_a_view_of_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="no such journal file"):
        JournalView(str(tmp_path / "missing.db"))
    assert list(tmp_path.iterdir()) == []


def test_a_new_journal_is_never_seen_half_made(tmp_path: Path, path: str) -> None:
    Journal(path).close()
    # nothing but the journal (and SQLite's own side files) is left behind
    assert sorted(p.name for p in tmp_path.iterdir()
                  if not p.name.startswith("tasks.db")) == []
    with JournalView(path) as view:
        assert view.counts()["pending"] == 0


# -- close waits for readers ---------------------------------------------------------------

CLOSE_RACE = textwrap.dedent("""
    import random, sys, threading
    from taskqueue.journal import Journal
    path = sys.argv[1]
    journal = Journal(path)
    for i in range(3000):
        journal.record_submit(f"t{i}", "job", '["' + "x" * 200 + '"]', "{}", {})
    journal.close()
    rng = random.Random(7)
    for round_ in range(25):
        journal = Journal(path)
        errors = []
        def read():
            try:
                while True:
                    journal.recover()
            except Exception as exc:
                errors.append(str(exc))
        readers = [threading.Thread(target=read) for _ in range(2)]
        [t.start() for t in readers]
        threading.Event().wait(rng.uniform(0, 0.02))
        journal.close()
        [t.join() for t in readers]
        bad = [e for e in errors if "is closed" not in e]
        if bad or len(errors) != 2:
            print("BAD", bad, len(errors))
            sys.exit(1)
    print("OK")
""")


def test_closing_while_other_threads_read_never_closes_the_file_under_them(path: str) -> None:
    # In a child process: closing a connection under a running query can
    # crash the interpreter outright (SIGSEGV), which must not take pytest down.
    result = subprocess.run([sys.executable, "-c", CLOSE_RACE, path], capture_output=True,
                            text=True, timeout=100)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-2000:])
    assert result.stdout.strip() == "OK"


# -- rows are checked -----------------------------------------------------------------------

def columns(**changes: Any) -> Tuple[Any, ...]:
    row: Dict[str, Any] = dict(id="t1", name="job", args="[1]", kwargs="{}", options="{}",
                               state="pending", attempts=0, due=None, submitted_at=1.7e9,
                               error=None, traceback=None, failed_at=None)
    row.update(changes)
    return tuple(row.values())


def test_a_sound_row_has_no_problem_and_no_damage() -> None:
    import json
    row = decode_row(columns(), json.loads)
    assert row.problem is None and row.damage is None and row.args == [1] and row.attempts == 0


@pytest.mark.parametrize("changes, says", [
    ({"attempts": "abc"}, "attempts"),
    ({"attempts": -1}, "attempts"),
    ({"state": "scheduled", "due": "soon"}, "due time"),
    ({"due": 1e300}, "due time"),
    ({"submitted_at": "yesterday"}, "submission time"),
    ({"state": "dead", "failed_at": 1e20}, "failure time"),
    ({"state": "bogus"}, "state"),
    ({"options": "[1, 2]"}, "options"),
    ({"options": "not json"}, "options"),
    ({"options": '{"time_limit": 1e300}'}, "time_limit"),
    ({"options": '{"priority": "high"}'}, "priority"),
    ({"options": '{"retries": -2}'}, "retries"),
    ({"options": '{"surprise": 1}'}, "surprise"),
])
def test_a_row_holding_what_taskqueue_never_writes_is_damaged_with_safe_values(
        changes: Dict[str, Any], says: str) -> None:
    import json
    row = decode_row(columns(**changes), json.loads)
    assert row.damage is not None and says in row.damage
    assert isinstance(row.attempts, int) and row.attempts >= 0
    assert row.due is None or isinstance(row.due, float)
    assert row.state in ("pending", "scheduled", "running", "dead")
    assert isinstance(row.options, dict)


def test_arguments_the_serializer_cannot_read_are_a_problem_not_damage() -> None:
    import json
    row = decode_row(columns(args="not json"), json.loads)
    assert row.damage is None
    assert row.problem is not None and "cannot be decoded" in row.problem


def damage(path: str, sql: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute(sql)
    conn.commit()
    assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    conn.close()


DAMAGES = [
    "UPDATE tasks SET attempts = 'abc' WHERE id = 'p1'",
    "UPDATE tasks SET due = 'soon' WHERE id = 's1'",
    "UPDATE tasks SET due = 1e300 WHERE id = 's1'",
    "UPDATE tasks SET options = '{\"time_limit\": 1e300}' WHERE id = 'p1'",
    "UPDATE tasks SET options = '{\"priority\": \"high\"}' WHERE id = 'p1'",
]
DAMAGE_IDS = ["attempts text", "due text", "due 1e300", "time_limit 1e300", "priority text"]


def journal_with_three_tasks(path: str) -> None:
    journal = Journal(path)
    journal.record_submit("p1", "job", "[1]", "{}", {})
    journal.record_submit("s1", "job", "[2]", "{}", {}, due=time.time() + 3600)
    journal.record_submit("p2", "job", "[3]", "{}", {})
    journal.close()


@pytest.mark.parametrize("sql", DAMAGES, ids=DAMAGE_IDS)
def test_a_file_with_a_damaged_row_is_refused_naming_it_and_left_untouched(
        tmp_path: Path, path: str, sql: str) -> None:
    # Such a row used to crash a worker after marking its task RUNNING (so
    # join, shutdown and the exit drain hung), or stop recovery half-way.
    journal_with_three_tasks(path)
    damage(path, sql)
    before = snapshot(tmp_path)

    with pytest.raises(JournalError, match="is corrupt") as caught:
        TaskQueue(workers=1, journal=path)

    message = str(caught.value)
    assert path in message and "\n" not in message
    assert "1 task row(s)" in message and ("p1" in message or "s1" in message)
    assert snapshot(tmp_path) == before
    # the file is not held: once fixed, it opens at once
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM tasks WHERE id IN ('p1', 's1')")
    conn.commit()
    conn.close()
    queue = TaskQueue(workers=1, journal=path)
    ran: List[int] = []
    queue.task(ran.append, name="job")
    queue.start()
    assert queue.join(WAIT_SECONDS)
    queue.shutdown()
    assert ran == [3]


@pytest.mark.parametrize("sql", DAMAGES, ids=DAMAGE_IDS)
def test_a_view_lists_a_damaged_row_marked(path: str, sql: str) -> None:
    journal_with_three_tasks(path)
    damage(path, sql)
    with JournalView(path) as view:
        damaged = [row for row in view.rows() if row.damage is not None]
        assert view.counts()["pending"] + view.counts()["scheduled"] == 3
    assert len(damaged) == 1 and damaged[0].id in ("p1", "s1")
