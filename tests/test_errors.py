"""Tests for taskqueue.errors: the exception tree and Retry."""

from __future__ import annotations

import math
import pickle

import pytest

import taskqueue
from taskqueue import errors
from taskqueue.errors import QueueClosed, QueueFull, Retry, TaskQueueError


def test_every_error_derives_from_task_queue_error():
    assert issubclass(TaskQueueError, Exception)
    for cls in (QueueFull, QueueClosed, Retry):
        assert issubclass(cls, TaskQueueError)
        assert issubclass(cls, Exception)


def test_queue_closed_is_also_a_runtime_error():
    assert issubclass(QueueClosed, RuntimeError)
    with pytest.raises(RuntimeError):
        raise QueueClosed("closed")
    assert not issubclass(QueueFull, RuntimeError)
    assert not issubclass(Retry, RuntimeError)


def test_the_tree_is_drawn_in_the_module_docstring():
    for name in errors.__all__:
        assert name in errors.__doc__
        assert getattr(errors, name).__doc__


def test_the_package_exports_the_errors():
    for name in ("TaskQueueError", "QueueFull", "QueueClosed", "Retry"):
        assert getattr(taskqueue, name) is getattr(errors, name)
        assert name in taskqueue.__all__


def test_retry_without_delay():
    retry = Retry()
    assert retry.delay is None
    assert str(retry) == "task asked for a retry"


@pytest.mark.parametrize("delay, expected", [(0, 0.0), (2, 2.0), (0.5, 0.5)])
def test_retry_keeps_its_delay_as_a_float(delay, expected):
    retry = Retry(delay=delay)
    assert retry.delay == expected and type(retry.delay) is float
    assert str(expected) in str(retry)
    assert Retry(delay).delay == expected  # positional too


@pytest.mark.parametrize("delay", [-1, -0.001, math.nan, math.inf, -math.inf])
def test_retry_refuses_a_bad_delay_naming_delay(delay):
    with pytest.raises(ValueError, match=r"\bdelay\b"):
        Retry(delay=delay)


@pytest.mark.parametrize("delay", ["1", True, [1]])
def test_retry_refuses_a_non_number_delay_naming_delay(delay):
    with pytest.raises(TypeError, match=r"\bdelay\b"):
        Retry(delay=delay)


def test_retry_survives_pickling_with_its_delay():
    for retry in (Retry(), Retry(delay=1.5)):
        again = pickle.loads(pickle.dumps(retry))
        assert type(again) is Retry and again.delay == retry.delay
