"""get_task_status(), cancel_task(), overview() and Stats.scheduled, on every broker."""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, List

import pytest

from taskqueue import (Backoff, EventKind, JournalView, RedisBroker, Task, TaskInfo, TaskQueue,
                       TaskState)

from conftest import WAIT, Gate

pytestmark = pytest.mark.timeout(60)


def boom() -> None:
    raise ValueError("bad input")


# -- in memory ------------------------------------------------------------------------------

def test_a_task_is_reported_as_it_moves_from_pending_to_running_to_succeeded(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1)
    before = time.time()
    held = queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    waiting = queue.submit(len, "abc")

    running, pending = queue.get_task_status(held.id), queue.get_task_status(waiting.id)
    assert running is not None and pending is not None
    assert (running.state, running.attempts, running.name) == (TaskState.RUNNING, 1, "Gate.wait")
    assert running.started_at is not None and before <= running.submitted_at <= running.started_at
    assert running.finished_at is None
    assert (pending.state, pending.attempts, pending.started_at) == (TaskState.PENDING, 0, None)

    gate.open()
    waiting.result(WAIT)
    done = queue.get_task_status(waiting.id)
    assert done is not None and done.state is TaskState.SUCCEEDED and done.id == waiting.id
    assert done.submitted_at <= done.started_at <= done.finished_at <= time.time()  # type: ignore[operator]
    assert done.error is None and done.attempts == 1


def test_a_failed_task_reports_its_final_error_and_its_attempts(
        make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1, retries=2, backoff=Backoff.none())
    handle = queue.submit(boom)
    assert isinstance(handle.exception(WAIT), ValueError)

    info = queue.get_task_status(handle.id)
    assert info is not None
    assert (info.state, info.attempts, info.error) == (TaskState.FAILED, 3, "ValueError: bad input")


def test_a_delayed_task_is_scheduled_with_its_due_time_and_can_be_cancelled_by_id(
        make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1)
    now = time.time()
    handle = queue.submit(Task(len, ("ab",), delay=60, priority=3))

    info = queue.get_task_status(handle.id)
    assert info is not None and info.state is TaskState.SCHEDULED and info.priority == 3
    assert info.due is not None and now + 59 <= info.due <= time.time() + 61
    assert queue.stats().scheduled == 1 and queue.stats().pending == 1

    assert queue.cancel_task(handle.id) is True
    assert handle.cancelled()
    cancelled = queue.get_task_status(handle.id)
    assert cancelled is not None and cancelled.state is TaskState.CANCELLED
    assert cancelled.finished_at is not None and cancelled.due is None
    assert queue.cancel_task(handle.id) is True  # already cancelled
    assert queue.stats().scheduled == 0


def test_cancel_task_refuses_a_running_a_finished_and_an_unknown_task(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1)
    running = queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    assert queue.cancel_task(running.id) is False
    gate.open()
    running.result(WAIT)
    assert queue.cancel_task(running.id) is False
    assert queue.cancel_task("no-such-task") is False
    with pytest.raises(TypeError, match="task_id"):
        queue.cancel_task(7)  # type: ignore[arg-type]


def test_an_unknown_id_is_none_never_pending(make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1)
    handle = queue.submit(len, "x")
    handle.result(WAIT)
    prefix = handle.id.rsplit("-", 1)[0]
    for unknown in ("", "nope", f"{prefix}-ffffff", f"{prefix}-zz", "00000000-1"):
        assert queue.get_task_status(unknown) is None
    with pytest.raises(TypeError, match="task_id"):
        queue.get_task_status(None)  # type: ignore[arg-type]


def test_only_the_most_recent_history_statuses_are_kept_oldest_forgotten_first(
        make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1, history=3)
    handles = [queue.submit(len, "x" * i) for i in range(7)]
    queue.join(WAIT)

    kept = [queue.get_task_status(h.id) for h in handles]
    assert [k is not None for k in kept] == [False] * 4 + [True] * 3
    assert all(k.state is TaskState.SUCCEEDED for k in kept[4:])  # type: ignore[union-attr]


def test_history_zero_keeps_no_finished_status_but_still_knows_live_tasks(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1, history=0)
    held = queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    assert queue.get_task_status(held.id).state is TaskState.RUNNING  # type: ignore[union-attr]
    gate.open()
    held.result(WAIT)
    assert queue.get_task_status(held.id) is None


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.5, TypeError), ("10", TypeError)])
def test_a_bad_history_is_refused_naming_it(bad: Any, error: type) -> None:
    with pytest.raises(error, match="history"):
        TaskQueue(history=bad)


def test_statuses_stay_right_while_many_threads_submit_and_look_up(
        make_queue: Callable[..., TaskQueue]) -> None:
    # Every task looked up, from its own submitter, while it runs and after:
    # never None, never a state it has not reached, always the task's own id.
    for _ in range(5):
        queue = make_queue(workers=4, history=10_000)
        problems: List[str] = []
        barrier = threading.Barrier(4)

        def submitter() -> None:
            barrier.wait()
            for i in range(300):
                handle = queue.submit(len, "x" * i)
                seen = queue.get_task_status(handle.id)
                if seen is None or seen.id != handle.id:
                    problems.append(f"live task {handle.id} reported as {seen}")
                handle.result(WAIT)
                after = queue.get_task_status(handle.id)
                if after is None or after.state is not TaskState.SUCCEEDED:
                    problems.append(f"finished task {handle.id} reported as {after}")

        threads = [threading.Thread(target=submitter) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert problems == []


def test_overview_shows_pending_by_priority_scheduled_soonest_first_running_and_this_process(
        make_queue: Callable[..., TaskQueue], gate: Gate) -> None:
    queue = make_queue(workers=1)
    held = queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    for priority, count in ((5, 2), (0, 3)):
        for _ in range(count):
            queue.submit(Task(len, ("x",), priority=priority))
    later = queue.submit(Task(len, ("y",), delay=90))
    sooner = queue.submit(Task(len, ("z",), delay=30))

    found = queue.overview()
    assert found.pending_by_priority == {5: 2, 0: 3}
    assert [t.id for t in found.scheduled] == [sooner.id, later.id]
    assert [t.id for t in found.running] == [held.id]
    assert len(found.processes) == 1
    assert found.processes[0].name.endswith(f":{os.getpid()}")
    assert (found.processes[0].workers, found.processes[0].running) == (1, 1)
    assert queue.overview(limit=1).scheduled[0].id == sooner.id
    assert len(queue.overview(limit=1).scheduled) == 1
    as_json = found.to_dict()
    assert as_json["pending_by_priority"] == {"5": 2, "0": 3}
    assert as_json["running"][0]["state"] == "running"


def test_task_info_round_trips_through_its_dict() -> None:
    info = TaskInfo(id="a", name="n", state=TaskState.FAILED, attempts=2, submitted_at=1.0,
                    started_at=2.0, finished_at=3.0, error="ValueError: x", priority=4)
    assert TaskInfo.from_dict(info.to_dict()) == info


def test_events_carry_the_wait_and_the_run_time_of_each_attempt(
        make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1, retries=1, backoff=Backoff.none())
    seen: List[Any] = []
    queue.add_listener(lambda event: seen.append((event.kind, event.seconds)))
    fails = threading.Event()

    def once() -> None:
        if not fails.is_set():
            fails.set()
            raise ValueError("first")

    queue.submit(once).result(WAIT)
    queue.join(WAIT)
    kinds = [kind for kind, _ in seen]
    assert kinds == [EventKind.SUBMITTED, EventKind.STARTED, EventKind.RETRYING,
                     EventKind.STARTED, EventKind.SUCCEEDED] or \
        kinds == [EventKind.STARTED, EventKind.SUBMITTED, EventKind.RETRYING,
                  EventKind.STARTED, EventKind.SUCCEEDED]
    for kind, seconds in seen:
        if kind is EventKind.SUBMITTED:
            assert seconds is None
        else:
            assert seconds is not None and 0 <= seconds < WAIT


# -- on the journal -------------------------------------------------------------------------

def test_journal_statuses_survive_a_restart_and_are_read_live_from_outside(tmp_path: Any) -> None:
    path = str(tmp_path / "tasks.db")
    first = TaskQueue(workers=1, journal=path, history=2)
    ok = first.task(len, name="ok")
    bad = first.task(boom, name="bad")
    with first:
        done = [ok.submit("ab"), ok.submit("abc"), ok.submit("abcd")]
        failed = bad.submit()
        for handle in done:
            handle.result(WAIT)
        failed.exception(WAIT)
        first.join(WAIT)
        # The owner runs: a reader in another connection sees the same.
        first.broker.journal.flush()  # type: ignore[attr-defined]
        with JournalView(path) as view:
            seen = view.get_task_status(failed.id)
            assert seen is not None and seen.state is TaskState.FAILED
            assert seen.error == "ValueError: bad input"
            stats = view.stats()
            assert (stats.succeeded, stats.failed, stats.dead_letters) == (3, 1, 1)
            assert view.overview().processes[0].workers == 1

    second = TaskQueue(workers=1, journal=path, history=2)
    second.task(len, name="ok")
    second.task(boom, name="bad")
    with second:
        # The last two ended kept (the dead letter too, as a dead letter).
        assert second.get_task_status(done[0].id) is None
        assert second.get_task_status(done[1].id) is None
        assert second.get_task_status(done[2].id).state is TaskState.SUCCEEDED  # type: ignore[union-attr]
        assert second.get_task_status(failed.id).state is TaskState.FAILED  # type: ignore[union-attr]
        assert second.get_task_status("0" * 32) is None


# -- on Redis -------------------------------------------------------------------------------

def test_redis_statuses_are_seen_from_every_process_and_cancel_works_by_id(
        redis_url: str, namespace: str, gate: Gate) -> None:
    worker = TaskQueue(workers=1, broker=RedisBroker(redis_url, namespace=namespace),
                       retries=0, name="worker")
    producer = TaskQueue(workers=0, broker=RedisBroker(redis_url, namespace=namespace),
                         name="producer")
    for queue in (worker, producer):
        queue.task(gate.wait, name="hold")
        queue.task(len, name="size")
        queue.task(boom, name="bad")
    try:
        worker.start()
        held = producer.tasks["hold"].submit()
        gate.wait_for_arrivals(1)
        queued = producer.tasks["size"].submit("abc")
        later = producer.tasks["size"].options(delay=60).submit("x")

        # Another process (here, the worker's own broker) sees the same.
        assert worker.get_task_status(held.id).state is TaskState.RUNNING  # type: ignore[union-attr]
        assert worker.get_task_status(queued.id).state is TaskState.PENDING  # type: ignore[union-attr]
        scheduled = worker.get_task_status(later.id)
        assert scheduled is not None and scheduled.state is TaskState.SCHEDULED
        assert scheduled.due is not None and scheduled.due > time.time() + 50
        assert producer.stats().scheduled == 1
        assert producer.get_task_status("no-such-id") is None
        seen = producer.overview()
        assert seen.pending_by_priority == {0: 1}
        assert [t.id for t in seen.scheduled] == [later.id]
        assert [(t.id, t.name, t.state) for t in seen.running] == \
            [(held.id, "hold", TaskState.RUNNING)]
        assert seen.running[0].submitted_at is not None
        assert [p.workers for p in seen.processes] == [1]  # the worker's; the producer has none

        assert worker.cancel_task(later.id) is True  # not the process that submitted it
        assert later.exception is not None and _ends(later)
        assert later.cancelled()
        assert producer.get_task_status(later.id).state is TaskState.CANCELLED  # type: ignore[union-attr]
        assert worker.cancel_task(held.id) is False  # running

        gate.open()
        held.result(WAIT)
        queued.result(WAIT)
        failed = producer.tasks["bad"].submit()
        failed.exception(WAIT)
        info = producer.get_task_status(failed.id)
        assert info is not None and info.state is TaskState.FAILED
        assert info.error is not None and info.error.endswith("ValueError: bad input")
        done = worker.get_task_status(queued.id)
        assert done is not None and done.state is TaskState.SUCCEEDED and done.name == "size"
        assert done.started_at is not None and done.finished_at is not None
    finally:
        gate.open()
        producer.shutdown()
        worker.shutdown()


def _ends(handle: Any) -> bool:
    try:
        handle.result(WAIT)
    except BaseException:
        pass
    return handle.done()


def test_a_process_without_the_task_function_requeues_a_redis_dead_letter_by_name(
        redis_url: str, namespace: str) -> None:
    # A dashboard's queue (workers=0, nothing registered) requeues what a
    # worker process failed; the worker runs it again, with its own options.
    fixed = threading.Event()

    def flaky() -> str:
        if not fixed.is_set():
            raise ValueError("not yet")
        return "ok"

    worker = TaskQueue(workers=1, broker=RedisBroker(redis_url, namespace=namespace))
    watcher = TaskQueue(workers=0, broker=RedisBroker(redis_url, namespace=namespace))
    job = worker.task(flaky, name="flaky", priority=2)
    try:
        worker.start()
        job.submit().exception(WAIT)
        [letter] = watcher.dead_letters()
        fixed.set()
        again = watcher.requeue(letter)
        assert again.result(WAIT) == "ok"
        assert watcher.dead_letters() == []
        info = watcher.get_task_status(again.id)
        assert info is not None and (info.state, info.name, info.priority) == \
            (TaskState.SUCCEEDED, "flaky", 2)
        with pytest.raises(ValueError, match="not held"):
            watcher.requeue(letter)
    finally:
        watcher.shutdown()
        worker.shutdown()


def test_a_dead_letters_task_stays_known_as_failed_after_its_status_is_forgotten(
        make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1, history=2)
    failed = queue.submit(Task(boom, priority=7))
    failed.exception(WAIT)
    for _ in range(3):
        queue.submit(len, "x").result(WAIT)
    queue.join(WAIT)

    info = queue.get_task_status(failed.id)
    assert info is not None
    assert (info.state, info.error, info.priority, info.attempts) == \
        (TaskState.FAILED, "ValueError: bad input", 7, 1)
    [letter] = queue.dead_letters()
    assert letter.task_id == failed.id
    queue.purge_dead()
    assert queue.get_task_status(failed.id) is None  # the letter gone too: forgotten


def test_only_an_id_as_a_handle_writes_it_matches_its_task(
        make_queue: Callable[..., TaskQueue]) -> None:
    queue = make_queue(workers=1)
    handle = queue.submit(len, "x")
    handle.result(WAIT)
    prefix, seq = handle.id.rsplit("-", 1)
    assert queue.get_task_status(handle.id) is not None
    for alias in (f"{prefix}-0{seq}", f"{prefix}-0x{seq}", f"{prefix}-+{seq}",
                  f"{prefix}- {seq}", f"{prefix}-{seq.upper()}X"):
        assert queue.get_task_status(alias) is None, alias


def test_a_journal_view_keeps_reading_fresh_data_after_it_asked_for_the_owner(
        tmp_path: Any) -> None:
    # overview() asks whether the owner runs; that must not drop the view's
    # own SQLite locks (closing a descriptor of the file would), which let
    # an owner delete the log under it and left the view on stale data.
    path = str(tmp_path / "tasks.db")
    first = TaskQueue(workers=1, journal=path)
    first.task(len, name="size")
    with first:
        first.tasks["size"].submit("a").result(WAIT)
    with JournalView(path) as view:
        assert view.overview().processes == []  # nobody owns it now
        second = TaskQueue(workers=1, journal=path)
        second.task(len, name="size")
        with second:
            for _ in range(20):
                second.tasks["size"].submit("ab").result(WAIT)
            second.join(WAIT)
            second.broker.journal.flush()  # type: ignore[attr-defined]
            assert len(view.overview().processes) == 1
        assert view.stats().succeeded == 21
