"""Tests for taskqueue.task: Task, TaskState and TaskHandle (a Future).

Handles are made directly here and moved through their transition methods
(``_begin``, ``_succeed``, ``_fail``, ``_back_to_pending``): those are the
seam the queue itself uses, so no queue or worker thread is involved.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import copy
import functools
import gc
import logging
import math
import pickle
import random
import sys
import threading
import time
import weakref
from dataclasses import FrozenInstanceError
from typing import Any, Callable, List, Optional

import pytest

from taskqueue.message import Message
from taskqueue.retry import Backoff, RetryPolicy
from taskqueue.task import Task, TaskHandle, TaskState, callable_name

# Generous bound on anything a test waits for: a bug fails instead of hanging.
WAIT = 5.0
POLICY = RetryPolicy(0, Backoff(), (Exception,))


def work(x: int = 0, y: int = 0) -> int:
    return x + y


class CancelRecorder:
    """An ``on_cancel`` callable that records every handle it is called with."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: List[TaskHandle] = []

    def __call__(self, handle: TaskHandle) -> None:
        with self._lock:
            self.calls.append(handle)

    def count(self, handle: TaskHandle) -> int:
        with self._lock:
            return sum(1 for h in self.calls if h is handle)


def make_handle(on_cancel: Optional[Callable[[TaskHandle], None]] = None,
                name: str = "job", fn: Callable[..., Any] = work,
                args: tuple = ()) -> TaskHandle:
    """A handle and its message, as a queue makes them, with a canceller that only marks it."""
    recorder = on_cancel or CancelRecorder()

    def canceller(handle: TaskHandle) -> bool:
        callbacks = handle._mark_cancelled()
        if callbacks is None:
            return handle.cancelled()
        recorder(handle)
        handle._run_callbacks(callbacks)
        return True

    handle = TaskHandle(name, canceller)
    handle._message = Message(fn, args, None, name, POLICY, handle)
    return handle


def begin(handle: TaskHandle) -> bool:
    """Start the next attempt, as a broker's consumer does."""
    return handle._begin(handle.attempts + 1)


def succeed(handle: TaskHandle, value: Any) -> None:
    assert begin(handle)
    handle._succeed(value)


def fail(handle: TaskHandle, exc: BaseException) -> None:
    assert begin(handle)
    handle._fail(exc)


def race(iterations: int, *actors: Callable[[int], None], limit: float = 20.0) -> None:
    """Run each ``actor(i)`` in its own thread, lined up on a Barrier for every i.

    Each actor spins for a random moment after the barrier, and the GIL's
    switch interval is shortened meanwhile: otherwise whichever thread the
    barrier releases first would win every round, and the race would never
    be run the other way. Fails (instead of hanging) if an actor raises, or
    if a thread is still running after ``limit`` seconds.
    """
    barrier = threading.Barrier(len(actors))
    errors: List[BaseException] = []

    def run(actor: Callable[[int], None], seed: int) -> None:
        spins = random.Random(seed).randrange
        try:
            for i in range(iterations):
                barrier.wait(WAIT)
                for _ in range(spins(1000)):
                    pass
                actor(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(actor, seed), daemon=True)
               for seed, actor in enumerate(actors)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + limit
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
    finally:
        sys.setswitchinterval(interval)
    assert not [t for t in threads if t.is_alive()], "a racer hung"
    assert not errors, errors[0]


# -- Task ------------------------------------------------------------------------


def test_task_keeps_its_fields_and_defaults_name_to_the_qualname():
    def inner():
        pass

    task = Task(inner, [1, 2], {"k": 3})
    assert task.fn is inner
    assert task.args == (1, 2) and isinstance(task.args, tuple)
    assert task.kwargs == {"k": 3}
    assert task.name == inner.__qualname__
    assert task.name.endswith("<locals>.inner")
    assert (task.retries, task.backoff, task.retry_on) == (None, None, None)


def test_task_name_defaults_for_methods_partials_and_callable_objects():
    class Job:
        def run(self):
            pass

        def __call__(self):
            pass

    assert Task(Job().run).name == Job.run.__qualname__
    assert Task(Job()).name == Job.__qualname__  # instances have no __qualname__
    assert Task(functools.partial(work, 1)).name == "partial"
    assert callable_name(work) == "work"


def test_task_explicit_name_wins():
    assert Task(work, name="billing.send").name == "billing.send"


def test_task_copies_args_and_kwargs():
    args = [1]
    kwargs = {"y": 2}
    task = Task(work, args, kwargs)
    args.append(99)
    kwargs["y"] = 99
    assert task.args == (1,)
    assert task.kwargs == {"y": 2}
    assert Task(work).kwargs == {}


@pytest.mark.parametrize("args", [(x for x in (4, 5)), {"a": 1}, "ab", 7])
def test_task_refuses_args_that_are_not_a_tuple_or_list(args):
    with pytest.raises(TypeError, match=r"\bargs\b"):
        Task(work, args)


def test_task_refuses_kwargs_with_non_str_keys():
    with pytest.raises(TypeError, match=r"\bkwargs\b"):
        Task(work, (), {1: "x"})


@pytest.mark.parametrize("fn", [42, "work", None])
def test_task_refuses_a_non_callable_fn_naming_fn(fn):
    with pytest.raises(TypeError, match=r"\bfn\b"):
        Task(fn)


@pytest.mark.parametrize("args", ["ab", b"ab", 5, None])
def test_task_refuses_bad_args_naming_args(args):
    with pytest.raises(TypeError, match=r"\bargs\b"):
        Task(work, args)


@pytest.mark.parametrize("kwargs", [[("x", 1)], "x=1", 5])
def test_task_refuses_bad_kwargs_naming_kwargs(kwargs):
    with pytest.raises(TypeError, match=r"\bkwargs\b"):
        Task(work, (), kwargs)


@pytest.mark.parametrize("name, error", [("", ValueError), (5, TypeError), (b"job", TypeError)])
def test_task_refuses_bad_name_naming_name(name, error):
    with pytest.raises(error, match=r"\bname\b"):
        Task(work, name=name)


@pytest.mark.parametrize("retries, error", [(-1, ValueError), (1.5, TypeError),
                                            (True, TypeError), ("3", TypeError)])
def test_task_refuses_bad_retries_naming_retries(retries, error):
    with pytest.raises(error, match=r"\bretries\b"):
        Task(work, retries=retries)


@pytest.mark.parametrize("backoff", [1.0, "fast", (0.1, 2.0)])
def test_task_refuses_bad_backoff_naming_backoff(backoff):
    with pytest.raises(TypeError, match=r"\bbackoff\b"):
        Task(work, backoff=backoff)


@pytest.mark.parametrize("retry_on", ["ValueError", [ValueError], (ValueError, int),
                                      ValueError(), int])
def test_task_refuses_bad_retry_on_naming_retry_on(retry_on):
    with pytest.raises(TypeError, match=r"\bretry_on\b"):
        Task(work, retry_on=retry_on)


def test_task_wraps_a_single_retry_on_class_in_a_tuple():
    assert Task(work, retry_on=ValueError).retry_on == (ValueError,)
    assert Task(work, retry_on=(ValueError, OSError)).retry_on == (ValueError, OSError)


def test_task_is_frozen():
    task = Task(work)
    with pytest.raises(FrozenInstanceError):
        task.name = "other"  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del task.fn
    with pytest.raises(AttributeError):
        task.extra = 1  # type: ignore[attr-defined]
    assert task.name == "work"


def test_task_equality_and_unhashability():
    assert Task(work, (1,), {"y": 2}) == Task(work, (1,), {"y": 2})
    assert Task(work, (1,)) != Task(work, (2,))
    assert Task(work) != "work"
    with pytest.raises(TypeError):
        hash(Task(work))
    assert "work" in repr(Task(work))


def test_task_replace_returns_a_changed_copy_and_leaves_the_original():
    backoff = Backoff.constant(1.0)
    task = Task(work, (1,), name="a", retries=1)
    changed = task.replace(args=(2,), retries=3, backoff=backoff)
    assert (changed.args, changed.retries, changed.backoff, changed.name) == ((2,), 3, backoff, "a")
    assert (task.args, task.retries, task.backoff) == ((1,), 1, None)
    assert task.replace() == task and task.replace() is not task


def test_task_replace_validates_like_the_constructor():
    task = Task(work)
    with pytest.raises(ValueError, match=r"\bretries\b"):
        task.replace(retries=-1)
    with pytest.raises(TypeError, match=r"\bfn\b"):
        task.replace(fn=3)
    with pytest.raises(TypeError, match="nosuch"):
        task.replace(nosuch=1)


def test_task_replace_name_none_falls_back_to_the_function_name():
    assert Task(work, name="custom").replace(name=None).name == "work"


def test_task_policy_returns_the_default_itself_when_nothing_is_overridden():
    default = RetryPolicy(2, Backoff(), (OSError,), rng=object())
    assert Task(work).policy(default) is default


def test_task_policy_overlays_only_the_fields_the_task_sets():
    rng = object()
    default = RetryPolicy(2, Backoff(), (OSError,), rng=rng)
    own_backoff = Backoff.constant(3.0)

    p = Task(work, retries=5).policy(default)
    assert (p.retries, p.backoff, p.retry_on, p.rng) == (5, default.backoff, (OSError,), rng)
    p = Task(work, backoff=own_backoff).policy(default)
    assert (p.retries, p.backoff, p.retry_on, p.rng) == (2, own_backoff, (OSError,), rng)
    p = Task(work, retry_on=KeyError).policy(default)
    assert (p.retries, p.backoff, p.retry_on, p.rng) == (2, default.backoff, (KeyError,), rng)
    p = Task(work, retries=0, retry_on=()).policy(default)
    assert (p.retries, p.retry_on) == (0, ())  # falsy overrides still override


def test_task_can_be_copied_and_pickled_like_a_frozen_dataclass():
    task = Task(work, (1,), {"y": 2}, name="n", retries=2)
    assert copy.copy(task) == task
    assert copy.deepcopy(task) == task
    assert pickle.loads(pickle.dumps(task)) == task


# -- TaskState -------------------------------------------------------------------


def test_task_state_terminal():
    assert {s for s in TaskState if s.terminal} == {
        TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED}
    assert not TaskState.PENDING.terminal
    assert not TaskState.SCHEDULED.terminal
    assert not TaskState.RUNNING.terminal


# -- TaskHandle: states and transitions ------------------------------------------


def test_handle_is_a_future_and_starts_pending():
    handle = make_handle(name="billing")
    assert isinstance(handle, cf.Future)
    assert handle.state is TaskState.PENDING
    assert (handle.done(), handle.running(), handle.cancelled()) == (False, False, False)
    assert handle.attempts == 0
    assert handle.name == "billing"
    assert handle.id in repr(handle) and "billing" in repr(handle) and "pending" in repr(handle)


def test_handle_moves_through_running_scheduled_and_pending():
    handle = make_handle()
    assert begin(handle)
    assert handle.state is TaskState.RUNNING and handle.running()
    assert handle.attempts == 1
    assert not begin(handle)  # already running: no second attempt starts
    assert handle.attempts == 1

    handle._back_to_pending(scheduled=True)
    assert handle.state is TaskState.SCHEDULED
    assert not handle.running() and not handle.done()
    assert begin(handle)
    assert handle.attempts == 2

    handle._back_to_pending(scheduled=False)
    assert handle.state is TaskState.PENDING
    assert begin(handle)
    assert handle.attempts == 3


def test_handle_succeeds_with_its_result():
    handle = make_handle()
    succeed(handle, {"answer": 42})
    assert handle.state is TaskState.SUCCEEDED
    assert handle.done() and not handle.running() and not handle.cancelled()
    assert handle.result() == {"answer": 42}
    assert handle.result(timeout=0) == {"answer": 42}
    assert handle.exception() is None
    assert "succeeded" in repr(handle)


def test_handle_fails_with_the_final_exception():
    handle = make_handle()
    error = ValueError("boom")
    fail(handle, error)
    assert handle.state is TaskState.FAILED and handle.done()
    with pytest.raises(ValueError) as raised:
        handle.result()
    assert raised.value is error
    assert handle.exception() is error
    assert handle.exception(timeout=0) is error


def test_handle_reraises_a_final_base_exception():
    handle = make_handle()
    fail(handle, KeyboardInterrupt())
    assert handle.state is TaskState.FAILED
    with pytest.raises(KeyboardInterrupt):
        handle.result()


def test_result_and_exception_time_out_on_a_pending_handle():
    handle = make_handle()
    with pytest.raises(cf.TimeoutError):
        handle.result(timeout=0.01)
    with pytest.raises(cf.TimeoutError):
        handle.result(timeout=0)
    with pytest.raises(cf.TimeoutError):
        handle.exception(timeout=0.01)
    with pytest.raises(cf.TimeoutError):
        handle.result(timeout=-1)
    begin(handle)
    with pytest.raises(cf.TimeoutError):
        handle.result(timeout=0.01)  # running is not done either


def test_result_waits_for_a_completion_from_another_thread():
    handle = make_handle()
    completer = threading.Thread(target=succeed, args=(handle, "late"))
    completer.start()
    assert handle.result(timeout=WAIT) == "late"
    completer.join(WAIT)


def test_finishing_drops_the_function_and_arguments():
    class Payload:
        pass

    payload = Payload()
    ref = weakref.ref(payload)
    handle = make_handle(args=(payload,))
    del payload
    succeed(handle, None)
    gc.collect()
    assert ref() is None


def test_set_result_and_set_exception_are_refused():
    handle = make_handle()
    with pytest.raises(RuntimeError):
        handle.set_result(1)
    with pytest.raises(RuntimeError):
        handle.set_exception(ValueError())
    assert handle.state is TaskState.PENDING and not handle.done()


def test_set_running_or_notify_cancel_is_refused_like_set_result():
    # Marking a queued handle running from outside would strand its task:
    # no worker starts it, nothing ends it (the Hardening issue's decision).
    handle = make_handle()
    with pytest.raises(RuntimeError, match="set_running_or_notify_cancel"):
        handle.set_running_or_notify_cancel()
    assert handle.state is TaskState.PENDING and handle.attempts == 0

    cancelled = make_handle()
    cancelled.cancel()
    with pytest.raises(RuntimeError):
        cancelled.set_running_or_notify_cancel()
    assert cancelled.state is TaskState.CANCELLED


def test_ids_are_unique_across_many_handles_made_in_many_threads():
    ids: List[List[str]] = [[] for _ in range(4)]

    def make_many(out: List[str]) -> None:
        out.extend(make_handle().id for _ in range(2500))

    threads = [threading.Thread(target=make_many, args=(out,)) for out in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    every = [i for out in ids for i in out]
    assert len(every) == 10_000
    assert len(set(every)) == 10_000
    assert all(isinstance(i, str) and i for i in every)


# -- TaskHandle: cancel ------------------------------------------------------------


def test_cancel_pending_cancels_and_calls_on_cancel_once():
    recorder = CancelRecorder()
    handle = make_handle(recorder)
    assert handle.cancel() is True
    assert recorder.calls == [handle]
    assert handle.state is TaskState.CANCELLED
    assert handle.cancelled() and handle.done() and not handle.running()
    with pytest.raises(cf.CancelledError):
        handle.result()
    with pytest.raises(cf.CancelledError):
        handle.exception(timeout=0)
    assert not begin(handle)  # a cancelled task never starts
    assert handle.attempts == 0


def test_cancel_scheduled_cancels_and_calls_on_cancel_once():
    recorder = CancelRecorder()
    handle = make_handle(recorder)
    begin(handle)
    handle._back_to_pending(scheduled=True)
    assert handle.cancel() is True
    assert recorder.calls == [handle]
    assert handle.state is TaskState.CANCELLED
    assert not begin(handle)


def test_cancel_twice_is_true_but_on_cancel_runs_once():
    recorder = CancelRecorder()
    handle = make_handle(recorder)
    assert handle.cancel() is True
    assert handle.cancel() is True
    assert recorder.calls == [handle]


def test_cancel_refused_while_running():
    recorder = CancelRecorder()
    handle = make_handle(recorder)
    begin(handle)
    assert handle.cancel() is False
    assert handle.state is TaskState.RUNNING
    assert recorder.calls == []
    handle._succeed(7)
    assert handle.result() == 7


@pytest.mark.parametrize("finish", [lambda h: succeed(h, 1), lambda h: fail(h, OSError())],
                         ids=["succeeded", "failed"])
def test_cancel_refused_once_finished(finish):
    recorder = CancelRecorder()
    handle = make_handle(recorder)
    finish(handle)
    state = handle.state
    assert handle.cancel() is False
    assert handle.state is state and not handle.cancelled()
    assert recorder.calls == []


def test_cancel_drops_the_function_and_arguments():
    class Payload:
        pass

    payload = Payload()
    ref = weakref.ref(payload)
    handle = make_handle(args=(payload,))
    del payload
    handle.cancel()
    gc.collect()
    assert ref() is None


# -- TaskHandle: done callbacks ------------------------------------------------------


def test_done_callback_added_before_completion_runs_on_the_completing_thread():
    handle = make_handle()
    seen = []
    handle.add_done_callback(lambda h: seen.append((h, h.result(timeout=0),
                                                    threading.current_thread().name)))
    assert seen == []
    completer = threading.Thread(target=succeed, args=(handle, 5), name="completer")
    completer.start()
    completer.join(WAIT)
    assert seen == [(handle, 5, "completer")]


def test_done_callback_added_after_completion_runs_at_once():
    handle = make_handle()
    succeed(handle, 5)
    seen = []
    handle.add_done_callback(lambda h: seen.append((h, threading.current_thread())))
    assert seen == [(handle, threading.current_thread())]


def test_done_callbacks_run_in_order_on_failure_and_on_cancel():
    failed, cancelled = make_handle(), make_handle()
    seen = []
    for handle in (failed, cancelled):
        handle.add_done_callback(lambda h: seen.append(("first", h)))
        handle.add_done_callback(lambda h: seen.append(("second", h)))
    fail(failed, ValueError())
    cancelled.cancel()
    assert seen == [("first", failed), ("second", failed),
                    ("first", cancelled), ("second", cancelled)]


def test_raising_done_callback_is_logged_and_the_others_still_run(caplog):
    caplog.set_level(logging.ERROR, logger="taskqueue")
    handle = make_handle()
    seen = []

    def bad(h):
        raise ZeroDivisionError("callback bug")

    handle.add_done_callback(lambda h: seen.append("before"))
    handle.add_done_callback(bad)
    handle.add_done_callback(lambda h: seen.append("after"))
    succeed(handle, 1)

    # And once more, registered after completion (run at once).
    handle.add_done_callback(bad)
    handle.add_done_callback(lambda h: seen.append("late"))

    assert seen == ["before", "after", "late"]
    records = [r for r in caplog.records if r.name.startswith("taskqueue")]
    assert len(records) == 2
    for record in records:
        assert record.levelno == logging.ERROR
        assert record.exc_info is not None and record.exc_info[0] is ZeroDivisionError
    assert handle.result() == 1  # the task's outcome is unaffected


# -- TaskHandle with concurrent.futures.wait / as_completed --------------------------


def test_wait_first_completed_returns_the_done_handle():
    done_h, pending_h = make_handle(), make_handle()
    succeed(done_h, 1)
    done, not_done = cf.wait([done_h, pending_h], timeout=WAIT,
                             return_when=cf.FIRST_COMPLETED)
    assert done == {done_h} and not_done == {pending_h}


def test_wait_first_completed_wakes_on_completion_by_another_thread():
    a, b = make_handle(), make_handle()
    completer = threading.Thread(target=succeed, args=(b, "b"))
    completer.start()
    done, not_done = cf.wait([a, b], timeout=WAIT, return_when=cf.FIRST_COMPLETED)
    completer.join(WAIT)
    assert done == {b} and not_done == {a}


def test_wait_all_completed_returns_when_every_handle_ended():
    ok, bad, gone = make_handle(), make_handle(), make_handle()
    succeed(ok, 1)
    fail(bad, ValueError())
    gone.cancel()
    done, not_done = cf.wait([ok, bad, gone], timeout=WAIT)
    assert done == {ok, bad, gone} and not_done == set()


def test_wait_all_completed_wakes_on_completions_by_other_threads():
    handles = [make_handle() for _ in range(3)]

    def finish_all():
        succeed(handles[0], 0)
        fail(handles[1], OSError())
        handles[2].cancel()

    completer = threading.Thread(target=finish_all)
    completer.start()
    done, not_done = cf.wait(handles, timeout=WAIT, return_when=cf.ALL_COMPLETED)
    completer.join(WAIT)
    assert done == set(handles) and not_done == set()


@pytest.mark.parametrize("return_when", [cf.FIRST_COMPLETED, cf.ALL_COMPLETED,
                                         cf.FIRST_EXCEPTION])
def test_wait_times_out_with_the_pending_handles_not_done(return_when):
    a, b = make_handle(), make_handle()
    done, not_done = cf.wait([a, b], timeout=0.01, return_when=return_when)
    assert done == set() and not_done == {a, b}


def test_wait_all_completed_times_out_with_a_partial_result():
    ok, pending = make_handle(), make_handle()
    succeed(ok, 1)
    done, not_done = cf.wait([ok, pending], timeout=0.01)
    assert done == {ok} and not_done == {pending}


def test_wait_first_exception_with_only_a_cancelled_handle_done_waits_out_the_timeout():
    gone, pending = make_handle(), make_handle()
    gone.cancel()
    done, not_done = cf.wait([gone, pending], timeout=0.01,
                             return_when=cf.FIRST_EXCEPTION)
    assert done == {gone} and not_done == {pending}


@pytest.mark.timeout(30)
def test_wait_first_exception_on_handles_that_already_ended():
    # Given one handle that failed, one that succeeded, and one still pending
    failed, ok, pending = make_handle(), make_handle(), make_handle()
    error = ValueError("first")
    fail(failed, error)
    succeed(ok, 1)
    outcomes: dict = {}

    def wait(key, fs, timeout):
        outcomes[key] = cf.wait(fs, timeout=timeout, return_when=cf.FIRST_EXCEPTION)

    # When cf.wait(FIRST_EXCEPTION) is called on them (in threads, so that a
    # deadlock fails the test instead of hanging it)
    waiters = [
        threading.Thread(target=wait, args=("failed", [failed, pending], WAIT), daemon=True),
        threading.Thread(target=wait, args=("ok", [ok, pending], 0.01), daemon=True),
    ]
    for t in waiters:
        t.start()
    deadline = time.monotonic() + WAIT
    for t in waiters:
        t.join(max(0.0, deadline - time.monotonic()))

    # Then both return: at once for the failure, after the timeout for the success
    assert not [t for t in waiters if t.is_alive()], "cf.wait(FIRST_EXCEPTION) deadlocked"
    assert outcomes["failed"] == ({failed}, {pending})
    assert outcomes["ok"] == ({ok}, {pending})


def test_as_completed_yields_finished_handles_then_later_ones_in_finishing_order():
    a, b, c = make_handle(), make_handle(), make_handle()
    succeed(a, "a")
    it = cf.as_completed([a, b, c], timeout=WAIT)
    assert next(it) is a
    # Finished while the iterator waits on its waiter: c first, then b.
    succeed(c, "c")
    fail(b, OSError())
    assert list(it) == [c, b]


def test_as_completed_wakes_on_completion_by_another_thread():
    a, b = make_handle(), make_handle()

    def finish():
        succeed(a, 1)
        b.cancel()

    completer = threading.Thread(target=finish)
    completer.start()
    got = list(cf.as_completed([a, b], timeout=WAIT))
    completer.join(WAIT)
    assert sorted(got, key=id) == sorted([a, b], key=id)


def test_as_completed_raises_timeout_error_for_what_did_not_finish():
    done_h, pending_h = make_handle(), make_handle()
    succeed(done_h, 1)
    it = cf.as_completed([done_h, pending_h], timeout=0.01)
    assert next(it) is done_h
    with pytest.raises(cf.TimeoutError):
        next(it)


def test_wait_and_as_completed_mix_handles_with_stock_futures():
    handle, stock = make_handle(), cf.Future()
    stock.set_result("stock")
    succeed(handle, "handle")
    done, not_done = cf.wait([handle, stock], timeout=WAIT)
    assert done == {handle, stock} and not_done == set()
    assert {f.result() for f in cf.as_completed([stock, handle], timeout=WAIT)} == {
        "stock", "handle"}


def test_wait_on_a_mix_wakes_for_a_handle_finished_by_another_thread():
    handle, stock = make_handle(), cf.Future()
    completer = threading.Thread(target=succeed, args=(handle, 1))
    completer.start()
    done, not_done = cf.wait([stock, handle], timeout=WAIT, return_when=cf.FIRST_COMPLETED)
    completer.join(WAIT)
    assert done == {handle} and not_done == {stock}


# -- TaskHandle with asyncio -----------------------------------------------------------


def test_wrap_future_awaits_a_result_set_by_another_thread():
    handle = make_handle()

    async def main():
        wrapped = asyncio.wrap_future(handle)
        completer = threading.Thread(target=succeed, args=(handle, "from thread"))
        completer.start()
        try:
            return await asyncio.wait_for(wrapped, WAIT)
        finally:
            completer.join(WAIT)

    assert asyncio.run(main()) == "from thread"


def test_wrap_future_raises_the_final_exception():
    handle = make_handle()
    error = LookupError("nope")

    async def main():
        wrapped = asyncio.wrap_future(handle)
        completer = threading.Thread(target=fail, args=(handle, error))
        completer.start()
        try:
            await asyncio.wait_for(wrapped, WAIT)
        finally:
            completer.join(WAIT)

    with pytest.raises(LookupError) as raised:
        asyncio.run(main())
    assert raised.value is error


def test_wrap_future_of_a_done_handle():
    handle = make_handle()
    succeed(handle, 3)

    async def main():
        return await asyncio.wait_for(asyncio.wrap_future(handle), WAIT)

    assert asyncio.run(main()) == 3


def test_cancelling_the_asyncio_wrapper_cancels_the_handle():
    recorder = CancelRecorder()
    handle = make_handle(recorder)

    async def main():
        wrapped = asyncio.wrap_future(handle)
        wrapped.cancel()
        with pytest.raises(asyncio.CancelledError):
            await wrapped

    asyncio.run(main())
    assert handle.cancelled()
    assert recorder.calls == [handle]


# -- races: waiters against a completer -----------------------------------------------


@pytest.mark.timeout(30)
def test_race_result_waiters_against_success():
    n = 1000
    handles = [make_handle() for _ in range(n)]

    def waiter(i):
        assert handles[i].result(timeout=WAIT) == i

    race(n, waiter, waiter, lambda i: succeed(handles[i], i))


@pytest.mark.timeout(30)
def test_race_result_and_exception_waiters_against_failure():
    n = 1000
    handles = [make_handle() for _ in range(n)]
    errors = [KeyError(i) for i in range(n)]

    def result_waiter(i):
        with pytest.raises(KeyError) as raised:
            handles[i].result(timeout=WAIT)
        assert raised.value is errors[i]

    def exception_waiter(i):
        assert handles[i].exception(timeout=WAIT) is errors[i]

    race(n, result_waiter, exception_waiter, lambda i: fail(handles[i], errors[i]))


@pytest.mark.timeout(30)
def test_race_wait_first_completed_against_success():
    n = 1000
    handles = [make_handle() for _ in range(n)]
    others = [make_handle() for _ in range(n)]  # never finish

    def waiter(i):
        done, not_done = cf.wait([handles[i], others[i]], timeout=WAIT,
                                 return_when=cf.FIRST_COMPLETED)
        assert done == {handles[i]} and not_done == {others[i]}

    race(n, waiter, lambda i: succeed(handles[i], i))


@pytest.mark.timeout(30)
def test_race_wait_all_completed_against_two_completers():
    n = 1000
    pairs = [(make_handle(), make_handle()) for _ in range(n)]

    def waiter(i):
        done, not_done = cf.wait(pairs[i], timeout=WAIT, return_when=cf.ALL_COMPLETED)
        assert done == set(pairs[i]) and not_done == set()

    race(n, waiter,
         lambda i: succeed(pairs[i][0], i),
         lambda i: fail(pairs[i][1], OSError(i)))


@pytest.mark.timeout(30)
def test_race_as_completed_against_two_completers():
    n = 1000
    pairs = [(make_handle(), make_handle()) for _ in range(n)]

    def waiter(i):
        got = list(cf.as_completed(pairs[i], timeout=WAIT))
        assert len(got) == 2 and set(got) == set(pairs[i])
        assert [h.result(timeout=0) for h in pairs[i]] == [i, -i]

    race(n, waiter,
         lambda i: succeed(pairs[i][0], i),
         lambda i: succeed(pairs[i][1], -i))


@pytest.mark.timeout(30)
def test_race_add_done_callback_against_success_calls_each_callback_once():
    n = 1000
    handles = [make_handle() for _ in range(n)]
    calls: List[List[Any]] = [[] for _ in range(n)]

    def register(i):
        handles[i].add_done_callback(
            lambda h: calls[i].append((h is handles[i], h.done(), h.result(timeout=0))))

    race(n, register, register, lambda i: succeed(handles[i], i))
    assert all(c == [(True, True, i)] * 2 for i, c in enumerate(calls)), \
        [(i, c) for i, c in enumerate(calls) if c != [(True, True, i)] * 2][:3]


@pytest.mark.timeout(30)
def test_race_every_kind_of_waiter_against_one_completer():
    # Given many handles, and for each one a result() waiter, a cf.wait()
    # waiter, an as_completed() waiter and a done callback, lined up with a
    # completer on a Barrier
    n = 500
    handles = [make_handle() for _ in range(n)]
    called = [threading.Event() for _ in range(n)]

    def by_result(i):
        assert handles[i].result(timeout=WAIT) == i

    def by_wait(i):
        done, _ = cf.wait([handles[i]], timeout=WAIT)
        assert done == {handles[i]}

    def by_as_completed(i):
        assert list(cf.as_completed([handles[i]], timeout=WAIT)) == [handles[i]]

    def by_callback(i):
        handles[i].add_done_callback(lambda h: called[i].set())

    # When the completer finishes each handle while they start waiting
    race(n, by_result, by_wait, by_as_completed, by_callback,
         lambda i: succeed(handles[i], i))

    # Then every waiter got the value (checked in the racers) and every callback ran
    assert all(e.is_set() for e in called)


# -- races: cancel -----------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_race_cancel_against_begin_exactly_one_wins():
    # Given pending handles, a canceller, a worker that begins (and then
    # finishes) an attempt, and a waiter on the result
    n = 2000
    recorder = CancelRecorder()
    handles = [make_handle(recorder) for _ in range(n)]
    cancel_won = [None] * n
    begin_won = [None] * n
    outcome = [None] * n

    def canceller(i):
        cancel_won[i] = handles[i].cancel()

    def worker(i):
        begin_won[i] = begin(handles[i])
        if begin_won[i]:
            handles[i]._succeed(i)

    def waiter(i):
        try:
            outcome[i] = handles[i].result(timeout=WAIT)
        except cf.CancelledError:
            outcome[i] = "cancelled"

    # When they race for every handle
    race(n, canceller, worker, waiter)

    # Then exactly one of cancel() and _begin() won each time, on_cancel ran
    # once iff cancel won, and the waiter saw the winner's outcome
    for i, handle in enumerate(handles):
        assert cancel_won[i] != begin_won[i], (i, cancel_won[i], begin_won[i])
        if cancel_won[i]:
            assert recorder.count(handle) == 1
            assert handle.state is TaskState.CANCELLED and handle.attempts == 0
            assert outcome[i] == "cancelled"
        else:
            assert recorder.count(handle) == 0
            assert handle.state is TaskState.SUCCEEDED and handle.attempts == 1
            assert outcome[i] == i
    assert len(recorder.calls) == sum(cancel_won)


@pytest.mark.timeout(30)
def test_race_two_cancels_call_on_cancel_once():
    n = 2000
    recorder = CancelRecorder()
    handles = [make_handle(recorder) for _ in range(n)]
    results: List[List[bool]] = [[] for _ in range(n)]

    def canceller(i):
        results[i].append(handles[i].cancel())

    race(n, canceller, canceller)
    assert all(r == [True, True] for r in results)
    assert all(recorder.count(h) == 1 for h in handles)
    assert len(recorder.calls) == n


@pytest.mark.timeout(30)
def test_race_cancel_against_waiters_and_callbacks():
    n = 1000
    handles = [make_handle() for _ in range(n)]
    called = [[] for _ in range(n)]

    def by_wait(i):
        done, _ = cf.wait([handles[i]], timeout=WAIT, return_when=cf.FIRST_COMPLETED)
        assert done == {handles[i]}
        assert handles[i].cancelled()

    def by_as_completed(i):
        assert list(cf.as_completed([handles[i]], timeout=WAIT)) == [handles[i]]

    def by_result(i):
        with pytest.raises(cf.CancelledError):
            handles[i].result(timeout=WAIT)

    def by_callback(i):
        handles[i].add_done_callback(lambda h: called[i].append(h.cancelled()))

    race(n, by_wait, by_as_completed, by_result, by_callback,
         lambda i: handles[i].cancel())
    assert all(c == [True] for c in called)


# -- timeouts that are not plain numbers -------------------------------------------------------

@pytest.mark.timeout(10)
@pytest.mark.parametrize("timeout", [math.nan, 0.0, -1.0])
def test_result_with_a_nan_or_spent_timeout_times_out_at_once(timeout: float) -> None:
    # A NaN timeout used to spin at 100% CPU until the task ended (never,
    # here): Future raises TimeoutError at once, and so does a handle.
    handle = make_handle()
    with pytest.raises(cf.TimeoutError):
        handle.result(timeout=timeout)
    with pytest.raises(cf.TimeoutError):
        handle.exception(timeout=timeout)


def test_a_finished_handle_returns_whatever_the_timeout() -> None:
    handle = make_handle()
    succeed(handle, 7)
    assert handle.result(timeout=math.nan) == 7
    assert handle.exception(timeout=math.nan) is None


@pytest.mark.timeout(10)
def test_a_timeout_longer_than_a_lock_accepts_still_waits_for_the_result() -> None:
    # Future.result(timeout=1e12) raises OverflowError; a handle waits in steps.
    handle = make_handle()
    finisher = threading.Timer(0.05, succeed, (handle, "late"))
    finisher.start()
    try:
        assert handle.result(timeout=1e12) == "late"
    finally:
        finisher.join(WAIT)


def test_a_bare_handle_made_with_the_old_signature_still_works() -> None:
    # TaskHandle(fn, args, kwargs, name, policy, on_cancel), as code written
    # for 0.1 (and CPython's Future tests, through their adapter) make one.
    told: List[TaskHandle] = []
    handle = TaskHandle(work, (1, 2), None, "legacy", POLICY, told.append)
    assert handle.name == "legacy" and handle.state is TaskState.PENDING
    assert handle.cancel() is True and handle.cancelled()
    assert told == [handle]
    assert handle.cancel() is True and told == [handle]  # told once
