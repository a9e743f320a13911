"""Tests for taskqueue.events: Event and the Listeners fan-out."""

from __future__ import annotations

import logging
from typing import List

import pytest

from taskqueue.events import Event, EventKind, Listeners
from taskqueue.retry import Backoff, RetryPolicy
from taskqueue.task import TaskHandle


def make_handle() -> TaskHandle:
    return TaskHandle(print, (), None, "job", RetryPolicy(0, Backoff(), (Exception,)),
                      lambda handle: None)


class Recorder:
    """A listener that records the events it gets into a shared list."""

    def __init__(self, name: str, into: List) -> None:
        self.name, self.into = name, into

    def __call__(self, event: Event) -> None:
        self.into.append((self.name, event))

    def __repr__(self) -> str:
        return f"<Recorder {self.name}>"


def test_event_fields_and_default_exception():
    handle = make_handle()
    event = Event(EventKind.STARTED, handle)
    assert (event.kind, event.handle, event.exception) == (EventKind.STARTED, handle, None)
    error = OSError()
    assert Event(EventKind.FAILED, handle, error).exception is error
    assert {k.value for k in EventKind} == {
        "submitted", "started", "succeeded", "retrying", "failed", "cancelled"}


def test_no_listeners_at_first_and_emit_is_harmless():
    listeners = Listeners()
    assert listeners.callbacks == ()
    listeners.emit(EventKind.SUBMITTED, make_handle())


def test_emit_reaches_every_listener_in_the_order_added():
    listeners, got = Listeners(), []
    a, b, c = Recorder("a", got), Recorder("b", got), Recorder("c", got)
    for listener in (a, b, c):
        listeners.add(listener)
    handle, error = make_handle(), ValueError("why")

    listeners.emit(EventKind.RETRYING, handle, error)

    assert [name for name, _ in got] == ["a", "b", "c"]
    assert all(event == Event(EventKind.RETRYING, handle, error) for _, event in got)
    assert all(got[0][1] is event for _, event in got)  # one Event for all


def test_remove_stops_the_events_to_that_listener_only():
    listeners, got = Listeners(), []
    a, b = Recorder("a", got), Recorder("b", got)
    listeners.add(a)
    listeners.add(b)
    listeners.remove(a)
    assert listeners.callbacks == (b,)
    listeners.emit(EventKind.STARTED, make_handle())
    assert [name for name, _ in got] == ["b"]


def test_a_listener_added_twice_is_called_twice_and_removed_once_at_a_time():
    listeners, got = Listeners(), []
    a = Recorder("a", got)
    listeners.add(a)
    listeners.add(a)
    listeners.emit(EventKind.STARTED, make_handle())
    assert len(got) == 2
    listeners.remove(a)
    assert listeners.callbacks == (a,)


def test_removing_an_unknown_listener_raises_value_error():
    listeners = Listeners()
    with pytest.raises(ValueError, match="not a listener"):
        listeners.remove(print)


@pytest.mark.parametrize("value", [None, 42, "print"])
def test_adding_a_non_callable_raises_type_error(value):
    listeners = Listeners()
    with pytest.raises(TypeError, match=r"\bcallback\b"):
        listeners.add(value)
    assert listeners.callbacks == ()


@pytest.mark.parametrize("error", [RuntimeError("listener bug"), SystemExit(3)],
                         ids=lambda e: type(e).__name__)
def test_a_raising_listener_is_logged_and_the_others_still_get_the_event(error, caplog):
    # Given a raising listener between two good ones
    caplog.set_level(logging.ERROR, logger="taskqueue")
    listeners, got = Listeners(), []

    def bad(event):
        raise error

    listeners.add(Recorder("before", got))
    listeners.add(bad)
    listeners.add(Recorder("after", got))

    # When an event is emitted
    handle = make_handle()
    listeners.emit(EventKind.FAILED, handle, OSError())

    # Then both good ones got it, and the failure was logged with its traceback
    assert [name for name, _ in got] == ["before", "after"]
    records = [r for r in caplog.records if r.name.startswith("taskqueue")]
    assert len(records) == 1
    assert records[0].levelno == logging.ERROR
    assert records[0].exc_info[1] is error
    assert "failed" in records[0].getMessage()


def test_a_listener_removing_itself_during_emit_does_not_disturb_that_emit():
    listeners, got = Listeners(), []

    def once(event):
        got.append("once")
        listeners.remove(once)

    listeners.add(once)
    listeners.add(Recorder("after", got))
    listeners.emit(EventKind.STARTED, make_handle())
    listeners.emit(EventKind.STARTED, make_handle())
    assert [g if isinstance(g, str) else g[0] for g in got] == ["once", "after", "after"]
