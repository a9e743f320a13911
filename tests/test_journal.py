"""Tests of the durable journal: the file, its checks, group commit, and a journaled queue."""

from __future__ import annotations

import collections
import json
import logging
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

from taskqueue import (Backoff, EventKind, JournalError, JournalLocked, JournalView, QueueClosed,
                       TaskQueue, TaskState)
from taskqueue.brokers.journal import JournalBroker
from taskqueue.journal import APPLICATION_ID, SCHEMA_VERSION, Journal

from conftest import WAIT, Gate

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "tasks.db")


@pytest.fixture
def journals() -> Iterator[Callable[..., Journal]]:
    """A factory of Journals, each closed afterwards."""
    made: List[Journal] = []

    def make(*args: Any, **kwargs: Any) -> Journal:
        journal = Journal(*args, **kwargs)
        made.append(journal)
        return journal

    yield make
    for journal in made:
        journal.close()


def row_count(path: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM tasks").fetchone()[0])
    finally:
        conn.close()


# -- the file ---------------------------------------------------------------------------

def test_a_new_journal_is_owner_only_and_marked_with_id_and_version(path: str, journals: Any) -> None:
    journals(path).close()

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_an_existing_empty_file_is_refused_untouched(path: str) -> None:
    # An empty file may be another program's (or a mistake): only a path
    # that does not exist yet becomes a new journal (see test_journalfile).
    Path(path).touch()
    with pytest.raises(JournalError, match="empty file"):
        Journal(path)
    assert Path(path).read_bytes() == b""


@pytest.mark.parametrize("content", [b"this is not a database" * 100, b"\x00" * 4096])
def test_a_file_that_is_not_a_database_is_refused_untouched(path: str, content: bytes) -> None:
    Path(path).write_bytes(content)

    with pytest.raises(JournalError, match="not a taskqueue journal") as caught:
        Journal(path)

    assert path in str(caught.value)
    assert Path(path).read_bytes() == content
    assert not os.path.exists(path + "-wal")


def test_a_sqlite_database_of_another_application_is_refused_untouched(path: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE accounts (id INTEGER)")
    conn.commit()
    conn.close()
    before = Path(path).read_bytes()

    with pytest.raises(JournalError, match="not a taskqueue journal") as caught:
        Journal(path)

    assert path in str(caught.value)
    assert Path(path).read_bytes() == before


def test_a_newer_schema_version_is_refused_untouched(path: str) -> None:
    Journal(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = Path(path).read_bytes()

    with pytest.raises(JournalError, match="newer") as caught:
        Journal(path)

    assert path in str(caught.value)
    assert Path(path).read_bytes() == before


def test_a_corrupt_journal_is_refused_with_the_file_named(path: str) -> None:
    # Given a journal with enough rows to span several pages
    journal = Journal(path)
    for index in range(200):
        journal.record_submit(f"id{index}", "t", "[]", "{}", {"pad": "x" * 100})
    journal.close()
    # When a page in the middle is overwritten with garbage
    data = bytearray(Path(path).read_bytes())
    page = 4096
    data[2 * page:3 * page] = b"\xff" * page
    Path(path).write_bytes(bytes(data))

    # Then opening it fails clearly, naming the file, and changes nothing
    with pytest.raises(JournalError) as caught:
        Journal(path)
    assert path in str(caught.value)
    assert Path(path).read_bytes() == bytes(data)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(JournalError) as caught:
        Journal(str(tmp_path))
    assert str(tmp_path) in str(caught.value)


def test_older_schema_versions_are_migrated_in_order(path: str, journals: Any) -> None:
    # Version 1 is the first schema, so the real list of migrations is
    # empty; a subclass shows the machinery upgrading a version-1 file.
    Journal(path).close()
    ran: List[int] = []

    def to_v2(conn: sqlite3.Connection) -> None:
        ran.append(1)
        conn.execute("CREATE INDEX tasks_by_state ON tasks (state)")

    def to_v3(conn: sqlite3.Connection) -> None:
        ran.append(2)
        conn.execute("ALTER TABLE tasks ADD COLUMN note TEXT")

    class Newer(Journal):
        schema_version = 3
        migrations = {1: to_v2, 2: to_v3}

    journals = Newer(path)
    journals.close()

    assert ran == [1, 2]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    assert "note" in [c[1] for c in conn.execute("PRAGMA table_info(tasks)")]
    conn.close()
    # and the older code now refuses the upgraded file
    with pytest.raises(JournalError, match="newer"):
        Journal(path)


def test_a_failed_migration_leaves_the_file_at_its_version(path: str) -> None:
    Journal(path).close()

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE halfway (x)")
        raise sqlite3.OperationalError("disk trouble")

    class Newer(Journal):
        schema_version = 2
        migrations = {1: broken}

    with pytest.raises(JournalError) as caught:
        Newer(path)
    assert path in str(caught.value)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name='halfway'").fetchone()[0] == 0
    conn.close()


def test_a_second_journal_on_the_same_file_is_locked_out(path: str, journals: Any) -> None:
    journals(path)

    with pytest.raises(JournalLocked) as caught:
        Journal(path)

    assert path in str(caught.value)


def test_the_lock_is_released_on_close(path: str, journals: Any) -> None:
    journals(path).close()
    journals(path).close()


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_both_durabilities_keep_what_was_recorded(path: str, durability: str) -> None:
    journal = Journal(path, durability=durability)
    journal.record_submit("a", "t", "[1]", "{}", {})
    journal.close()

    reopened = Journal(path, durability=durability)
    assert [row.id for row in reopened.recover()] == ["a"]
    reopened.close()


def test_a_bad_durability_is_refused_by_name(path: str) -> None:
    with pytest.raises(ValueError, match="durability"):
        Journal(path, durability="sometimes")
    with pytest.raises(ValueError, match="durability"):
        TaskQueue(durability="sometimes")


def test_a_serializer_needs_dumps_and_loads(path: str) -> None:
    with pytest.raises(TypeError, match="serializer"):
        Journal(path, serializer=object())


# -- group commit -------------------------------------------------------------------------

def test_concurrent_submitters_share_transactions(path: str, journals: Any) -> None:
    journal = journals(path)
    threads, each = 8, 200
    start = threading.Barrier(threads)

    def submit(worker: int) -> None:
        start.wait(WAIT)
        for index in range(each):
            journal.record_submit(f"{worker}-{index}", "t", "[]", "{}", {})

    pool = [threading.Thread(target=submit, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(WAIT)

    assert len(journal.recover()) == threads * each
    assert journal.commits < threads * each


def test_records_change_the_state_of_a_row(path: str, journals: Any) -> None:
    journal = journals(path)
    journal.record_submit("a", "t", "[]", "{}", {})
    journal.record_submit("b", "t", "[]", "{}", {})
    journal.record_submit("c", "t", "[]", "{}", {})

    journal.record_started("a", 1)
    journal.record_retry("b", 1, time.time() + 60)
    journal.record_dead("c", 3, "ValueError: boom", "Traceback ...", 1.5)

    rows = {row.id: row for row in journal.recover()}
    assert (rows["a"].state, rows["a"].attempts) == ("running", 1)
    assert rows["b"].state == "scheduled" and rows["b"].due > time.time()
    assert (rows["c"].state, rows["c"].error, rows["c"].failed_at) == ("dead", "ValueError: boom", 1.5)
    assert journal.counts() == {"pending": 0, "scheduled": 1, "running": 1, "dead": 1}
    journal.record_done("a")
    journal.forget_dead("c")
    assert [row.id for row in journal.recover()] == ["b"]


def test_requeue_and_purge_dead(path: str, journals: Any) -> None:
    journal = journals(path)
    for name in ("x", "y", "y"):
        task_id = f"{name}{journal.counts()['dead']}"
        journal.record_submit(task_id, name, "[]", "{}", {})
        journal.record_dead(task_id, 2, "E: e", "", 1.0)

    assert journal.requeue_dead("y") == 2
    assert journal.counts()["pending"] == 2
    assert all(row.attempts == 0 for row in journal.recover() if row.state == "pending")
    assert journal.purge_dead() == 1
    assert journal.counts() == {"pending": 2, "scheduled": 0, "running": 0, "dead": 0}


def test_records_after_close_are_dropped_quietly(path: str) -> None:
    journal = Journal(path)
    journal.close()
    journal.record_done("nothing")  # a late worker outcome: no error
    with pytest.raises(JournalError, match="closed"):
        journal.record_submit("a", "t", "[]", "{}", {})
    journal.close()  # idempotent


# -- a journaled queue --------------------------------------------------------------------

@pytest.fixture
def journaled(path: str, make_queue: Callable[..., TaskQueue]) -> Callable[..., TaskQueue]:
    def make(**kwargs: Any) -> TaskQueue:
        kwargs.setdefault("workers", 2)
        return make_queue(journal=path, **kwargs)
    return make


def test_submit_returns_with_the_task_on_disk(path: str, journaled: Any) -> None:
    queue = journaled()
    release = threading.Event()

    @queue.task
    def hold(x: int) -> int:
        release.wait(WAIT)
        return x

    handles = [hold.submit(i) for i in range(3)]

    # Another connection (another process could do the same) reads them
    # there while the queue runs: each submit returned with its row committed.
    assert row_count(path) == 3
    assert all(len(h.id) == 32 for h in handles)
    release.set()
    assert [h.result(WAIT) for h in handles] == [0, 1, 2]
    queue.shutdown()
    assert row_count(path) == 0


def test_a_non_json_argument_is_refused_and_nothing_is_written(path: str, journaled: Any) -> None:
    queue = journaled()

    @queue.task
    def job(x: Any) -> None:
        pass

    job.submit(1).result(WAIT)
    with pytest.raises(TypeError, match="JSON"):
        job.submit(object())
    with pytest.raises(TypeError, match="JSON"):
        job.submit(1, when=object())
    queue.shutdown()
    assert row_count(path) == 0
    assert queue.stats().submitted == 1


def test_only_registered_task_functions_are_accepted(path: str, journaled: Any) -> None:
    queue = journaled()
    other = TaskQueue(workers=1)

    @other.task
    def elsewhere() -> None:
        pass

    with pytest.raises(TypeError, match="@queue.task"):
        queue.submit(print, "x")
    with pytest.raises(TypeError, match="@queue.task"):
        queue.submit(elsewhere.task())
    with pytest.raises(TypeError, match="@queue.task"):
        queue.submit(lambda: None)
    other.shutdown()
    queue.shutdown()
    assert row_count(path) == 0


def test_retry_on_for_one_submission_is_refused(path: str, journaled: Any) -> None:
    queue = journaled()

    @queue.task(retry_on=ValueError)
    def job() -> None:
        pass

    with pytest.raises(TypeError, match="retry_on"):
        job.options(retry_on=KeyError).submit()


def test_a_custom_serializer_is_used(path: str, journaled: Any) -> None:
    class Reversed:
        import json as _json

        @classmethod
        def dumps(cls, obj: Any) -> str:
            return cls._json.dumps(obj)[::-1]

        @classmethod
        def loads(cls, data: str) -> Any:
            return cls._json.loads(data[::-1])

    queue = journaled(serializer=Reversed)

    @queue.task
    def echo(x: Any) -> Any:
        return x

    assert echo.submit({"a": [1, 2]}).result(WAIT) == {"a": [1, 2]}


def test_a_second_queue_on_the_same_file_is_locked_out(path: str, journaled: Any) -> None:
    journaled()
    with pytest.raises(JournalLocked) as caught:
        TaskQueue(journal=path)
    assert path in str(caught.value)


def test_an_unstarted_queue_releases_the_journal_on_shutdown(path: str) -> None:
    TaskQueue(journal=path).shutdown()
    TaskQueue(journal=path).shutdown()


def cancel_the_backlog(queue: TaskQueue, started: threading.Event,
                       release: threading.Event) -> None:
    """Shut ``queue`` down cancelling what has not started, once the held task runs."""
    assert started.wait(WAIT)
    queue.shutdown(wait=False, cancel_futures=True)  # cancels at once, before returning
    release.set()
    queue.shutdown()


def run_to_end(path: str, setup: Callable[[TaskQueue], Any], **kwargs: Any) -> TaskQueue:
    """A queue on ``path`` that recovers, runs everything and shuts down."""
    queue = TaskQueue(journal=path, workers=2, **kwargs)
    setup(queue)
    queue.start()
    assert queue.join(WAIT)
    queue.shutdown()
    return queue


def test_pending_tasks_left_by_a_shutdown_that_cancelled_run_on_the_next_start(path: str) -> None:
    # Given a queue whose only worker is busy, with tasks queued behind it
    ran: List[int] = []
    started, release = threading.Event(), threading.Event()
    queue = TaskQueue(journal=path, workers=1)

    @queue.task(name="job")
    def job(x: int) -> None:
        if x == 0:
            started.set()
            release.wait(WAIT)
        ran.append(x)

    first = job.submit(0)
    rest = [job.submit(x) for x in (1, 2, 3)]
    # When it shuts down cancelling what has not started
    cancel_the_backlog(queue, started, release)
    assert first.result(WAIT) is None and all(h.cancelled() for h in rest)

    # Then the next queue on the journal runs them, and keeps their ids
    def setup(queue: TaskQueue) -> None:
        queue.task(name="job")(lambda x: ran.append(x))

    second = run_to_end(path, setup)
    assert sorted(ran) == [0, 1, 2, 3]
    assert second.recovered == 3
    assert row_count(path) == 0


def test_a_task_cancelled_by_hand_is_forgotten(path: str, journaled: Any) -> None:
    queue = journaled()

    @queue.task
    def later() -> None:
        pass

    handle = later.options(delay=60).submit()
    assert handle.cancel()
    queue.shutdown()
    assert row_count(path) == 0


def test_delays_and_retries_keep_their_due_times_across_a_restart(path: str) -> None:
    # Given a delayed task and one waiting for a retry, recorded 30 s ahead
    queue = TaskQueue(journal=path, workers=1, retries=1, backoff=Backoff(base=30, jitter=False))
    retrying = threading.Event()
    queue.add_listener(lambda event: event.kind.value == "retrying" and retrying.set())

    @queue.task(name="flaky")
    def flaky() -> None:
        raise OSError("down")

    @queue.task(name="later")
    def later() -> None:
        pass

    later.options(delay=30).submit()
    flaky.submit()
    assert retrying.wait(WAIT)  # the retry is recorded before the event
    queue.shutdown(cancel_futures=True)
    before = time.time()

    # When a new queue starts on the journal
    second = TaskQueue(journal=path, workers=1)
    second.task(name="flaky")(lambda: None)
    second.task(name="later")(lambda: None)
    second.start()
    try:
        # Then both wait, scheduled, for what is left of their 30 s
        assert second.recovered == 2
        with JournalView(path) as view:  # read while the queue owns the file
            rows = {row.name: row for row in view.rows()}
        for row in rows.values():
            assert row.state == "scheduled"
            assert before + 20 < row.due < before + 31
        assert rows["flaky"].attempts == 1
        assert not second.join(timeout=0.2)  # not run early
    finally:
        second.shutdown(cancel_futures=True)


def test_dead_letters_survive_a_restart_and_can_be_requeued(path: str) -> None:
    queue = TaskQueue(journal=path, workers=1)

    @queue.task(name="boom")
    def boom(x: int) -> None:
        raise ValueError(f"boom {x}")

    handle = boom.submit(7)
    with pytest.raises(ValueError):
        handle.result(WAIT)
    queue.shutdown()

    ran: List[int] = []
    second = TaskQueue(journal=path, workers=1)
    second.task(name="boom")(lambda x: ran.append(x))
    second.start()
    try:
        [letter] = second.dead_letters()
        assert letter.task_id == handle.id
        assert letter.task.args == (7,)
        assert "ValueError: boom 7" in str(letter.exception)
        assert "ValueError" in letter.traceback
        assert second.recovered == 0
        second.requeue(letter).result(WAIT)
        assert ran == [7]
    finally:
        second.shutdown()
    assert row_count(path) == 0


def test_an_unregistered_name_becomes_a_dead_letter_and_the_rest_run(path: str) -> None:
    # Given a journal holding tasks of two functions
    queue = TaskQueue(journal=path, workers=1)
    started, release = threading.Event(), threading.Event()

    @queue.task(name="kept")
    def kept(x: int) -> None:
        started.set()
        release.wait(WAIT)

    @queue.task(name="gone")
    def gone(x: int) -> None:
        pass

    kept.submit(0)
    gone.submit(1)
    kept.submit(2)
    cancel_the_backlog(queue, started, release)

    # When the next run registers only one of them
    ran: List[int] = []
    second = run_to_end(path, lambda q: q.task(name="kept")(lambda x: ran.append(x)))

    # Then the other becomes a dead letter with a clear reason, kept on disk
    assert ran == [2]
    [letter] = second.dead_letters()
    assert isinstance(letter.exception, JournalError)
    assert "no task function named 'gone' is registered" in str(letter.exception)
    assert "@queue.task" in str(letter.exception)
    assert letter.task.args == (1,)
    third = TaskQueue(journal=path)
    try:
        with JournalView(path) as view:
            assert [row.name for row in view.dead()] == ["gone"]
    finally:
        third.shutdown()


def test_options_and_keys_come_back(path: str) -> None:
    queue = TaskQueue(journal=path, workers=1)
    started, release = threading.Event(), threading.Event()

    @queue.task(name="hold")
    def hold() -> None:
        started.set()
        release.wait(WAIT)

    @queue.task(name="job", retries=4)
    def job(x: Any) -> None:
        pass

    hold.submit()
    assert started.wait(WAIT)  # the worker is busy: the job (of a higher priority) waits
    job.options(priority=5, key="k1", backoff=Backoff(base=0.01)).submit((1, 2))
    cancel_the_backlog(queue, started, release)

    seen: Dict[str, Any] = {}
    second = TaskQueue(journal=path, workers=1)
    gate = threading.Event()

    @second.task(name="job", retries=4)
    def job2(x: Any) -> None:
        gate.wait(WAIT)
        seen["x"] = x

    second.task(name="hold")(lambda: None)
    second.start()
    try:
        # the key is held by the resumed task: a new submission gets its handle
        again = job2.options(key="k1").submit("other")
        with JournalView(path) as view:
            assert again.id in {row.id for row in view.rows()}
        gate.set()
        again.result(WAIT)
        assert seen["x"] == [1, 2]  # tuples come back as lists
    finally:
        gate.set()
        second.shutdown()


def test_a_row_that_cannot_be_decoded_becomes_a_dead_letter_and_the_rest_run(path: str) -> None:
    # Given a journal with a good task and one whose arguments are garbage
    journal = Journal(path)
    journal.record_submit("good", "job", "[1]", "{}", {})
    journal.record_submit("bad", "job", "[1, ", "{}", {})
    journal.close()

    # When a queue starts on it
    ran: List[int] = []
    queue = run_to_end(path, lambda q: q.task(name="job")(ran.append))

    # Then the good one ran, and the bad one is a dead letter saying why
    assert ran == [1] and queue.recovered == 1
    [letter] = queue.dead_letters()
    assert letter.task_id == "bad" and "cannot be decoded" in str(letter.exception)
    reopened = Journal(path)
    try:
        assert [(row.id, row.state) for row in reopened.recover()] == [("bad", "dead")]
    finally:
        reopened.close()


def test_a_queue_with_full_durability_runs_and_resumes(path: str) -> None:
    ran: List[int] = []
    queue = TaskQueue(journal=path, durability="full", workers=2)
    queue.task(name="job")(ran.append)
    with queue:
        for index in range(20):
            queue.tasks["job"].submit(index)
    assert sorted(ran) == list(range(20))
    assert row_count(path) == 0


def test_a_record_that_fails_raises_for_its_submitter_and_the_writer_goes_on(
        path: str, journals: Any) -> None:
    journal = journals(path)
    journal.record_submit("a", "t", "[]", "{}", {})

    with pytest.raises(JournalError, match="could not record") as caught:
        journal.record_submit("a", "t", "[]", "{}", {})  # the same id again: refused by SQLite

    assert path in str(caught.value)
    journal.record_submit("b", "t", "[]", "{}", {})
    assert [row.id for row in journal.recover()] == ["a", "b"]


def test_records_in_a_failed_group_are_written_one_by_one(path: str, journals: Any) -> None:
    # Given many submitters at once, one of them with an id already taken
    journal = journals(path)
    journal.record_submit("taken", "t", "[]", "{}", {})
    start = threading.Barrier(9)
    errors: List[BaseException] = []

    def submit(task_id: str) -> None:
        start.wait(WAIT)
        try:
            journal.record_submit(task_id, "t", "[]", "{}", {})
        except JournalError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(f"t{n}",)) for n in range(8)]
    threads.append(threading.Thread(target=submit, args=("taken",)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)

    # Then only that one failed, whichever group it shared
    assert len(errors) == 1
    assert len(journal.recover()) == 9


class _WriterBug(BaseException):
    """Not an Exception: it gets past the writer's per-record error handling."""


class DyingJournal(Journal):
    """A journal whose writer thread dies on its first commit (the fault seam)."""

    def _commit(self, batch: Any) -> Any:
        raise _WriterBug("injected bug in the writer")


def test_a_dead_writer_fails_its_waiters_and_every_later_record(path: str, caplog: Any) -> None:
    caplog.set_level(logging.CRITICAL, logger="taskqueue")
    journal = DyingJournal(path)
    try:
        # The submitter whose commit killed the writer is told, not left waiting
        with pytest.raises(JournalError, match="writer thread died"):
            journal.record_submit("a", "t", "[]", "{}", {})
        # ...and so is everyone after it, at once
        with pytest.raises(JournalError, match="writer thread died"):
            journal.record_submit("b", "t", "[]", "{}", {})
        with pytest.raises(JournalError, match="writer thread died"):
            journal.flush()
        journal.record_done("a")  # a worker's record: dropped, no error
        assert any("writer thread died" in r.getMessage() for r in caplog.records)
    finally:
        journal.close()  # still releases the file
    Journal(path).close()


def test_records_nobody_waits_for_are_committed_without_a_submission(
        path: str, journals: Any) -> None:
    journal = journals(path)
    journal.record_submit("a", "t", "[]", "{}", {})
    committed = journal.commits

    journal.record_started("a", 1)  # nobody waits for this one
    deadline = time.monotonic() + WAIT
    while journal.commits == committed and time.monotonic() < deadline:
        threading.Event().wait(0.001)  # polling an effect that has no event to wait on

    assert journal.commits == committed + 1
    assert journal.counts()["running"] == 1


def test_a_submission_takes_the_records_queued_before_it_into_its_commit(
        path: str, journals: Any) -> None:
    for _ in range(50):
        journal = journals(path + "x")
        journal.record_submit("a", "t", "[]", "{}", {})
        journal.record_started("a", 1)
        journal.record_submit("b", "t", "[]", "{}", {})  # returns once committed...
        # Read as committed now, without the flush that recover() does first
        with journal._conn_lock:
            rows = dict(journal._conn.execute("SELECT id, state FROM tasks").fetchall())
        assert rows == {"a": "running", "b": "pending"}  # ...with the start before it
        journal.close()
        os.remove(path + "x")


def test_a_task_running_at_stop_after_stop_becomes_a_dead_letter(path: str) -> None:
    # Given two tasks (retries=0) found running when the process stopped:
    # one as many times as is forgiven, one a time more (as one that kills
    # the process whenever it runs would be)
    from taskqueue.brokers.journal import CRASHES_FORGIVEN
    journal = Journal(path)
    for task_id, attempts in (("forgiven", CRASHES_FORGIVEN), ("poison", 1 + CRASHES_FORGIVEN)):
        journal.record_submit(task_id, "crashes", json.dumps([task_id]), "{}", {})
        journal.record_started(task_id, attempts)
    journal.close()

    # When the queue restarts on the journal
    ran: List[str] = []
    queue = TaskQueue(journal=path, workers=1)
    queue.task(name="crashes")(ran.append)
    queue.start()
    try:
        assert queue.join(WAIT)
        letters = queue.dead_letters()
    finally:
        queue.shutdown()

    # Then the first runs again, and the other is a dead letter saying why
    assert ran == ["forgiven"]
    [letter] = letters
    assert (letter.task_id, letter.attempts) == ("poison", 1 + CRASHES_FORGIVEN)
    assert "running when the process stopped" in str(letter.exception)
    reopened = Journal(path)
    try:
        assert [row.id for row in reopened.dead()] == ["poison"]
    finally:
        reopened.close()


# -- the first start, and what a restart reports ------------------------------------------

def test_concurrent_first_submits_run_each_task_once(tmp_path: Path, shaken: None) -> None:
    # The first submit starts the queue, which takes back what the file
    # holds. A submit racing it used to commit its row before that read:
    # the row was taken for one left by a previous run and queued again, so
    # its task ran twice (and a failing one left two dead letters).
    threads, rounds = 12, 40
    for round_ in range(rounds):
        # Given a fresh queue on a new file, not started yet
        queue = TaskQueue(journal=str(tmp_path / f"{round_}.db"), workers=2)
        runs: collections.Counter[int] = collections.Counter()
        lock = threading.Lock()

        @queue.task(name="job")
        def job(x: int) -> None:
            with lock:
                runs[x] += 1

        # When several threads make its first submits at once
        start = threading.Barrier(threads)
        handles: List[Any] = [None] * threads

        def submit(index: int) -> None:
            start.wait(WAIT)
            handles[index] = job.submit(index)

        submitters = [threading.Thread(target=submit, args=(i,)) for i in range(threads)]
        try:
            for thread in submitters:
                thread.start()
            for thread in submitters:
                thread.join(WAIT)
            assert queue.join(WAIT)
        finally:
            queue.shutdown(cancel_futures=True, timeout=WAIT)

        # Then every task ran once, and nothing was taken for left over
        assert runs == collections.Counter(range(threads)), f"round {round_}"
        assert queue.recovered == 0
        assert len({handle.id for handle in handles}) == threads
        assert queue.stats().submitted == threads
        assert row_count(str(tmp_path / f"{round_}.db")) == 0


def test_a_failed_task_reports_the_same_status_after_a_restart(path: str) -> None:
    # Given a task that failed, its status read before the queue stops
    queue = TaskQueue(journal=path, workers=1)

    @queue.task(name="boom")
    def boom(x: int) -> None:
        raise ValueError(f"boom {x}")

    handle = boom.submit(7)
    handle.exception(WAIT)
    assert queue.join(WAIT)
    before = queue.get_task_status(handle.id)
    queue.shutdown()
    assert before is not None and before.started_at is not None
    assert before.error == "ValueError: boom 7"

    # When a queue starts on the file again (the task a dead letter there too)
    second = TaskQueue(journal=path, workers=1)
    second.task(name="boom")(lambda x: None)
    with second:
        [letter] = second.dead_letters()
        after = second.get_task_status(handle.id)

    # Then its status is the file's, as it was, not one made from the letter
    assert letter.task_id == handle.id
    assert after is not None
    assert (after.state, after.error, after.attempts) == (TaskState.FAILED, "ValueError: boom 7", 1)
    assert (after.submitted_at, after.started_at) == (before.submitted_at, before.started_at)
    assert after.finished_at is not None


def test_a_task_read_back_after_a_restart_keeps_when_it_was_submitted(
        path: str, gate: Gate) -> None:
    # Given a task left pending by a shutdown (its only worker held busy)
    started, release = threading.Event(), threading.Event()
    queue = TaskQueue(journal=path, workers=1)

    @queue.task(name="job")
    def job(x: int) -> None:
        if x == 0:
            started.set()
            release.wait(WAIT)

    job.submit(0)
    left = job.submit(1)
    info = queue.get_task_status(left.id)
    assert info is not None
    submitted = info.submitted_at
    cancel_the_backlog(queue, started, release)
    assert left.cancelled()

    # When a queue starts on the file again and runs it
    restarted = time.time()
    second = TaskQueue(journal=path, workers=1)
    second.task(name="job")(gate.wait)
    with second:
        gate.wait_for_arrivals(1)
        running = second.get_task_status(left.id)
        gate.open()
        assert second.join(WAIT)
        done = second.get_task_status(left.id)

    # Then its status says when it was submitted, not when it was read back
    assert second.recovered == 1
    assert running is not None and running.state is TaskState.RUNNING
    assert running.submitted_at == submitted < restarted
    assert running.started_at is not None and running.started_at >= restarted
    assert done is not None and done.state is TaskState.SUCCEEDED
    assert done.submitted_at == submitted


def test_a_task_left_long_ago_keeps_its_submission_time_but_waits_from_the_restart(
        path: str) -> None:
    # Given a row a stopped process left an hour ago
    an_hour_ago = time.time() - 3600
    journal = Journal(path)
    journal.record_submit("old", "job", json.dumps([1]), "{}", {}, submitted_at=an_hour_ago)
    journal.close()

    # When a queue starts on the file and runs it
    waits: List[float] = []
    queue = TaskQueue(journal=path, workers=1)
    queue.task(name="job")(lambda x: None)
    queue.add_listener(lambda event: event.kind is EventKind.STARTED and
                       waits.append(event.seconds))  # type: ignore[arg-type]
    with queue:
        assert queue.join(WAIT)
        info = queue.get_task_status("old")

    # Then it reports the stored time, and its wait counts only this run's
    assert info is not None and info.state is TaskState.SUCCEEDED
    assert info.submitted_at == an_hour_ago
    [waited] = waits
    assert 0 <= waited < WAIT


# -- arguments are what a restart reads back --------------------------------------------

def test_a_task_sees_the_same_arguments_before_and_after_a_restart(tmp_path: Path) -> None:
    # A journaled task used to get the original objects on its first run and
    # their JSON forms after a restart: code that worked could break only in
    # crash recovery. Now both runs see what the journal gives back.
    seen: List[Any] = []

    def make(path: str) -> TaskQueue:
        queue = TaskQueue(workers=1, journal=path)
        queue.task(name="show")(lambda point, prices: seen.append((point, prices)))
        return queue

    first = make(str(tmp_path / "a.db"))
    first.tasks["show"].submit((3, 4), {7: (1, 2)}).result(WAIT)
    first.shutdown()

    interrupted = make(str(tmp_path / "b.db"))
    interrupted.tasks["show"].options(delay=0.05).submit((3, 4), {7: (1, 2)})
    interrupted.shutdown(cancel_futures=True)  # left in the file, as a crash leaves it
    assert seen == [([3, 4], {"7": [1, 2]})]
    resumed = make(str(tmp_path / "b.db"))
    resumed.start()
    assert resumed.join(WAIT)
    resumed.shutdown()

    assert seen == [([3, 4], {"7": [1, 2]})] * 2


def test_arguments_that_would_not_come_back_equal_are_refused_and_nothing_written(
        path: str, journaled: Any) -> None:
    queue = journaled()
    job = queue.task(name="job")(lambda prices: None)
    with pytest.raises(TypeError, match="would not come back"):
        job.submit({1: "int key", "1": "str key"})
    with pytest.raises(TypeError, match="would not come back"):
        job.submit(prices={"a": {2: "x", "2": "y"}})
    assert queue.stats().submitted == 0
    queue.shutdown()
    assert row_count(path) == 0


@pytest.mark.timeout(30)
def test_journaled_asubmit_does_not_block_the_event_loop_for_the_commit(path: str) -> None:
    # The commit used to run on the event loop's thread. Here the serializer
    # waits until another coroutine on the same loop has run: if asubmit
    # blocked the loop, that coroutine could never run and the submit fails.
    import asyncio

    loop_ran = threading.Event()

    class WaitsForTheLoop:
        @staticmethod
        def dumps(value: Any) -> str:
            if value == ["wait"] and not loop_ran.wait(5):
                raise RuntimeError("the event loop was blocked")
            return json.dumps(value)

        loads = staticmethod(json.loads)

    queue = TaskQueue(workers=1, journal=path, serializer=WaitsForTheLoop)
    job = queue.task(name="job")(lambda x: x)

    async def main() -> Any:
        async def other() -> None:
            loop_ran.set()

        submitting = asyncio.ensure_future(queue.asubmit(job.task("wait")))
        await asyncio.sleep(0)
        await other()
        handle = await submitting
        return await handle

    try:
        assert asyncio.run(main()) == "wait"
    finally:
        queue.shutdown()


# -- recovery, and what races it ---------------------------------------------------------

class HeldRecovery(JournalBroker):
    """A journal broker whose recovery waits at ``gate`` before it reads the file back."""

    def __init__(self, path: str, gate: Gate, fail_first_start: bool = False) -> None:
        super().__init__(Journal(path))
        self.gate = gate
        self.fail_first_start = fail_first_start

    def start(self) -> None:
        if self.fail_first_start:
            self.fail_first_start = False
            raise JournalError("injected: the owner row was not written")
        super().start()

    def recover(self) -> List[Any]:
        self.gate.wait()
        return super().recover()


def leave_rows(path: str, count: int) -> None:
    journal = Journal(path)
    for n in range(count):
        journal.record_submit(f"old{n}", "job", json.dumps([n]), "{}", {})
    journal.close()


def test_a_shutdown_while_recovery_runs_is_not_held_up_by_it(path: str, gate: Gate) -> None:
    # Given a queue whose first start is recovering rows a stopped run left
    leave_rows(path, 3)
    queue = TaskQueue(broker=HeldRecovery(path, gate), workers=1)
    queue.task(name="job")(lambda n: n)
    errors: List[BaseException] = []

    def start() -> None:
        try:
            queue.start()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    starter = threading.Thread(target=start)
    starter.start()
    gate.wait_for_arrivals(1)
    # When another thread (a signal handler, say) shuts it down meanwhile,
    # it returns without waiting for the recovery (which it would wait for ever)
    queue.shutdown(wait=False, cancel_futures=True)
    gate.open()
    starter.join(WAIT)
    assert not starter.is_alive() and errors == []
    # Then the queue is closed for good; what it did not take in is not
    # reported as pending, and the rows are kept for the next run
    with pytest.raises(QueueClosed):
        queue.submit(abs, 1)
    assert [queue.get_task_status(f"old{n}") for n in range(3)] == [None] * 3
    queue.shutdown()
    again = TaskQueue(journal=path, workers=1)
    ran: List[int] = []
    again.task(name="job")(ran.append)
    with again:
        assert again.join(WAIT) and sorted(ran) == [0, 1, 2] and again.recovered == 3


def test_a_submit_racing_recovery_waits_for_it_and_runs_once(path: str, gate: Gate) -> None:
    leave_rows(path, 2)
    queue = TaskQueue(broker=HeldRecovery(path, gate), workers=2)
    ran: List[int] = []
    job = queue.task(name="job")(ran.append)
    starter = threading.Thread(target=queue.start)
    starter.start()
    gate.wait_for_arrivals(1)
    handles: List[Any] = []
    submitter = threading.Thread(target=lambda: handles.append(job.submit(9)))
    submitter.start()
    gate.open()
    starter.join(WAIT)
    submitter.join(WAIT)
    assert queue.join(WAIT)
    assert sorted(ran) == [0, 1, 9] and queue.recovered == 2
    assert handles[0].result(WAIT) is None
    queue.shutdown()


def test_a_first_start_that_fails_recovers_on_the_next(path: str, gate: Gate) -> None:
    # Given rows left, and a first start that fails after opening the file
    leave_rows(path, 2)
    gate.open()
    queue = TaskQueue(broker=HeldRecovery(path, gate, fail_first_start=True), workers=1)
    ran: List[int] = []
    job = queue.task(name="job")(ran.append)
    with pytest.raises(JournalError, match="injected"):
        queue.start()
    # When it is started again, the rows left are run, once, and it takes new work
    queue.start()
    assert job.submit(5).result(WAIT) is None
    assert queue.join(WAIT)
    assert sorted(ran) == [0, 1, 5] and queue.recovered == 2
    assert queue.stats().submitted == 3 and queue.stats().succeeded == 3
    queue.shutdown()
