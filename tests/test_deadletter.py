"""Tests for taskqueue.deadletter: DeadLetter and the bounded DeadLetterStore."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any, List, Optional, Tuple

import pytest

from conftest import WAIT
from taskqueue import JournalError, JournalView, QueueFull, TaskQueue, TaskQueueError
from taskqueue.deadletter import DeadLetter, DeadLetterStore, MissingTaskFunction
from taskqueue.journal import Journal
from taskqueue.task import Task, callable_name

WAIT = 5.0


def send_mail(to: str) -> None:
    raise OSError("smtp down")


def letter(n: int = 0, task: Task = None, exc: BaseException = None) -> DeadLetter:  # type: ignore[assignment]
    return DeadLetter(
        task=task or Task(send_mail, (f"user{n}@example.com",)),
        task_id=f"id-{n}",
        exception=exc or OSError(n),
        traceback=f"Traceback {n}",
        attempts=n + 1,
        submitted_at=1000.0 + n,
        failed_at=2000.0 + n,
    )


def test_dead_letter_keeps_its_fields_and_names_its_task():
    task = Task(send_mail, ("a@example.com",), name="mail.send")
    error = OSError("smtp down")
    dead = DeadLetter(task, "id-1", error, "tb", 3, 10.0, 12.0)
    assert (dead.task, dead.task_id, dead.exception, dead.traceback) == (task, "id-1", error, "tb")
    assert (dead.attempts, dead.submitted_at, dead.failed_at) == (3, 10.0, 12.0)
    assert dead.name == "mail.send"
    assert letter().name == "send_mail"
    with pytest.raises(dataclasses.FrozenInstanceError):
        dead.attempts = 4  # type: ignore[misc]


def test_store_keeps_letters_oldest_first():
    store = DeadLetterStore(limit=10)
    letters = [letter(i) for i in range(3)]
    for dead in letters:
        store.add(dead)
    assert store.letters() == letters
    assert store.counts() == (3, 0)


def test_store_drops_the_oldest_past_its_limit_and_counts_the_drops():
    store = DeadLetterStore(limit=3)
    letters = [letter(i) for i in range(7)]
    for dead in letters:
        store.add(dead)
    held = store.letters()
    assert len(held) == 3
    assert all(a is b for a, b in zip(held, letters[4:]))
    assert store.counts() == (3, 4)


def test_store_with_limit_zero_keeps_none_and_counts_all_as_dropped():
    store = DeadLetterStore(limit=0)
    for i in range(5):
        store.add(letter(i))
    assert store.letters() == []
    assert store.counts() == (0, 5)


def test_remove_matches_by_identity_not_equality():
    # Given two letters that are equal but not the same object
    task, error = Task(send_mail, ("x",)), OSError("same")
    first = letter(1, task=task, exc=error)
    twin = letter(1, task=task, exc=error)
    assert first == twin and first is not twin
    store = DeadLetterStore(limit=10)
    store.add(first)
    store.add(twin)

    # When the second is removed
    assert store.remove(twin) is True

    # Then the first is still there, and removing the second again fails
    assert len(store.letters()) == 1 and store.letters()[0] is first
    assert store.remove(twin) is False
    assert store.remove(letter(1, task=task, exc=error)) is False
    assert store.counts() == (1, 0)  # a removal is not a drop


def test_remove_from_the_middle_keeps_the_order():
    store = DeadLetterStore(limit=10)
    letters = [letter(i) for i in range(5)]
    for dead in letters:
        store.add(dead)
    assert store.remove(letters[2])
    assert store.letters() == [letters[0], letters[1], letters[3], letters[4]]


def test_letters_returns_a_copy():
    store = DeadLetterStore(limit=10)
    store.add(letter(1))
    copy = store.letters()
    copy.append(letter(2))
    copy.clear()
    assert len(store.letters()) == 1
    assert store.letters() is not store.letters()


@pytest.mark.timeout(30)
def test_concurrent_adds_lose_nothing_and_count_every_drop():
    # Given eight threads adding 500 letters each to a store that keeps 1000
    threads_n, per_thread, limit = 8, 500, 1000
    store = DeadLetterStore(limit=limit)
    start = threading.Barrier(threads_n)
    made: List[List[DeadLetter]] = [[letter(t * per_thread + i) for i in range(per_thread)]
                                    for t in range(threads_n)]

    def add_all(mine: List[DeadLetter]) -> None:
        start.wait(WAIT)
        for dead in mine:
            store.add(dead)

    # When they all add at once
    threads = [threading.Thread(target=add_all, args=(mine,)) for mine in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not [t for t in threads if t.is_alive()]

    # Then the store holds exactly its limit, counts every other letter as
    # dropped, and keeps each thread's letters in the order it added them
    held = store.letters()
    assert store.counts() == (limit, threads_n * per_thread - limit)
    assert len({id(d) for d in held}) == limit
    for mine in made:
        position = {id(d): i for i, d in enumerate(mine)}
        kept = [position[id(d)] for d in held if id(d) in position]
        assert kept == sorted(kept)
        # what a thread lost are its oldest letters
        assert kept == list(range(per_thread - len(kept), per_thread))


def test_a_traceback_left_out_is_formatted_from_the_exception_when_read():
    try:
        raise ValueError("boom in a task")
    except ValueError as exc:
        error = exc
    letter = DeadLetter(Task(print), "id-9", error, None, 1, 1.0, 2.0)
    text = letter.traceback
    assert "ValueError: boom in a task" in text and "Traceback" in text
    assert letter.traceback is text  # formatted once
    with pytest.raises(AttributeError):
        letter.attempts = 2  # type: ignore[misc]  # frozen


# -- requeue is one-shot ---------------------------------------------------------------


def failing_once() -> Any:
    runs: List[int] = []

    def charge(order: int) -> None:
        runs.append(order)
        if len(runs) == 1:
            raise ConnectionError("payment gateway down")
    return charge, runs


@pytest.mark.timeout(30)
def test_requeueing_a_letter_twice_raises_and_runs_nothing() -> None:
    queue = TaskQueue(workers=2)
    charge, runs = failing_once()
    queue.submit(charge, 42)
    assert queue.join(WAIT)
    letter = queue.dead_letters()[0]
    again = queue.requeue(letter)
    assert again.result(WAIT) is None
    with pytest.raises(ValueError, match="requeued or purged"):
        queue.requeue(letter)
    assert queue.join(WAIT)
    queue.shutdown()
    assert runs == [42, 42] and queue.dead_letters() == []
    assert queue.stats().submitted == 2


@pytest.mark.timeout(60)
def test_two_threads_requeueing_one_letter_run_it_once() -> None:
    for _ in range(30):
        queue = TaskQueue(workers=2)
        charge, runs = failing_once()
        queue.submit(charge, 7)
        assert queue.join(WAIT)
        letter = queue.dead_letters()[0]
        barrier = threading.Barrier(2)
        outcomes: List[Any] = []

        def admin() -> None:  # two operators click "retry" at once
            barrier.wait(WAIT)
            try:
                outcomes.append(queue.requeue(letter))
            except ValueError as exc:
                outcomes.append(exc)

        admins = [threading.Thread(target=admin) for _ in range(2)]
        for thread in admins:
            thread.start()
        for thread in admins:
            thread.join(WAIT)
        assert queue.join(WAIT)
        queue.shutdown()
        assert sorted(type(o).__name__ for o in outcomes) == ["TaskHandle", "ValueError"]
        assert runs == [7, 7]


def full_queue_with_a_letter(gate: Any, submit_timeout: Optional[float]) -> Tuple[TaskQueue,
                                                                                  DeadLetter]:
    """A queue of one slot, taken, its one worker held at ``gate``; and a dead letter of it."""
    queue = TaskQueue(workers=1, maxsize=1, submit_timeout=submit_timeout)
    charge, runs = failing_once()
    queue.submit(charge, 1)
    assert queue.join(WAIT)
    letter = queue.dead_letters()[0]
    queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    queue.submit(abs, -1)  # the one slot is taken
    return queue, letter


@pytest.mark.timeout(30)
def test_a_requeue_timeout_bounds_the_wait_whatever_submit_timeout_says(gate: Any) -> None:
    queue, letter = full_queue_with_a_letter(gate, submit_timeout=None)  # submits wait for ever
    with pytest.raises(QueueFull):
        queue.requeue(letter, timeout=0.05)
    with pytest.raises(ValueError, match="timeout"):
        queue.requeue(letter, timeout=-1)
    with pytest.raises(TypeError, match="timeout"):
        queue.requeue(letter, timeout="soon")  # type: ignore[arg-type]
    assert queue.dead_letters() == [letter] and queue.stats().submitted == 3
    gate.open()
    assert queue.requeue(letter, timeout=None).result(WAIT) is None
    queue.shutdown()


def test_a_requeue_that_finds_no_room_keeps_the_letter(gate: Any) -> None:
    queue, letter = full_queue_with_a_letter(gate, submit_timeout=0.05)
    with pytest.raises(QueueFull):
        queue.requeue(letter)
    assert queue.dead_letters() == [letter]
    gate.open()
    assert queue.requeue(letter).result(WAIT) is None
    queue.shutdown()


# -- a task function this process does not have ---------------------------------------


def test_a_missing_task_function_goes_by_its_name():
    fn = MissingTaskFunction("mail.send")
    assert fn.name == fn.__qualname__ == callable_name(fn) == "mail.send"
    assert repr(fn) == "MissingTaskFunction('mail.send')"
    assert letter(task=Task(fn, ("a@example.com",))).name == "mail.send"
    assert fn == fn and fn != MissingTaskFunction("mail.send")  # as functions: only itself


def test_calling_a_missing_task_function_runs_nothing_and_says_why():
    with pytest.raises(TaskQueueError, match="^no task function named 'mail.send' is registered$"):
        MissingTaskFunction("mail.send")(1, to="a@example.com")
    elsewhere = MissingTaskFunction("mail.send", error=JournalError, hint="ask its owner")
    with pytest.raises(JournalError, match="'mail.send' is registered; ask its owner$"):
        elsewhere()


def test_a_journals_letter_of_a_function_not_registered_stands_in_and_is_kept_on_requeue(
        tmp_path: Path) -> None:
    # Given a journal holding the dead letter of a task function "gone"
    path = str(tmp_path / "tasks.db")
    journal = Journal(path)
    journal.record_submit("id-1", "gone", "[1]", "{}", {})
    journal.record_dead("id-1", 1, "OSError: smtp down", "Traceback", 2000.0)
    journal.close()

    # When a view reads it, and a queue that does not register "gone" starts on it
    with JournalView(path) as view:
        [seen] = view.dead_letters()
    queue = TaskQueue(journal=path, workers=1)
    try:
        queue.start()
        [held] = queue.dead_letters()

        # Then both letters name it and stand in for it; calling says where it runs
        for dead in (seen, held):
            assert isinstance(dead.task.fn, MissingTaskFunction)
            assert (dead.name, dead.task.args) == ("gone", (1,))
        with pytest.raises(JournalError, match="owns the journal"):
            seen.task.fn(1)
        with pytest.raises(JournalError, match="'gone' is registered$"):
            held.task.fn(1)
        # and a journal refuses to requeue it (it cannot be found again by name), keeping it
        with pytest.raises(TypeError, match=r"got MissingTaskFunction\('gone'\)"):
            queue.requeue(held)
        assert queue.dead_letters() == [held]
    finally:
        queue.shutdown()
