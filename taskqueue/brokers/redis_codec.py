"""What a RedisBroker writes to Redis and reads back as JSON: pure functions, no connection.

A task crosses processes as JSON only, never pickle: its arguments (refused
unless they survive the round trip), its options, its outcome, and, when it
fails for good, its dead letter; a failure read back is a
:class:`~taskqueue.errors.TaskFailed`. These functions turn messages,
outcomes and errors into that JSON and back. They sit below every other part
of the broker (:mod:`~taskqueue.brokers.redis`,
:mod:`~taskqueue.brokers.redis_producer`,
:mod:`~taskqueue.brokers.redis_consumer`), which all import them from here.
"""

from __future__ import annotations

import json
import time
import traceback as traceback_module
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..deadletter import DeadLetter, MissingTaskFunction
from ..errors import TaskFailed
from ..message import Message
from ..task import Task

__all__ = ["CRASHES_FORGIVEN"]

CRASHES_FORGIVEN = 2
"""Deliveries past ``retries + CRASHES_FORGIVEN`` make a task a dead letter (as the journal)."""


def _round_trip(args: List[Any], kwargs: Dict[str, Any]) -> Tuple[List[Any], Dict[str, Any]]:
    # What a worker will be given: the JSON round trip, refused if it loses something.
    try:
        encoded = json.dumps(args), json.dumps(kwargs)
        decoded = json.loads(encoded[0]), json.loads(encoded[1])
        unchanged = (json.dumps(decoded[0]), json.dumps(decoded[1])) == encoded
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the task's arguments cannot cross processes as JSON "
                        f"({type(exc).__name__}: {exc}); pass JSON values") from None
    if not unchanged:
        raise TypeError("the task's arguments would not come back from JSON as they were "
                        "written (dict keys that are equal as strings, such as 1 and '1', "
                        "collide); pass arguments that survive the round trip")
    return decoded[0], decoded[1]


def _error(exc: BaseException, text: str) -> Dict[str, str]:
    if isinstance(exc, TaskFailed):  # failed elsewhere already: keep what it said
        return {"type": exc.type_name, "message": exc.message, "traceback": exc.traceback}
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ in ("builtins", "__main__") \
        else f"{kind.__module__}.{kind.__qualname__}"
    try:
        message = str(exc)
    except Exception:
        message = "<str() failed>"
    if not text:
        try:
            text = "".join(traceback_module.format_exception(kind, exc, exc.__traceback__))
        except Exception:
            text = ""
    return {"type": name, "message": message, "traceback": text}


def _failure(error: Dict[str, Any]) -> TaskFailed:
    return TaskFailed(str(error.get("type", "Exception")), str(error.get("message", "")),
                      str(error.get("traceback", "")))


def _options(message: Message) -> Dict[str, Any]:
    # A task's options as JSON: what a worker (or a requeue) needs to run it.
    policy = message.policy
    options: Dict[str, Any] = {
        "retries": policy.retries, "priority": message.priority, "key": message.key,
        "time_limit": message.time_limit,
        "backoff": {"base": policy.backoff.base, "factor": policy.backoff.factor,
                    "max": policy.backoff.max, "jitter": policy.backoff.jitter}}
    registered = getattr(message.fn, "name", message.name)
    if message.name != registered:
        options["name"] = message.name
    return options


def _body_and_meta(name: str, args: List[Any], kwargs: Dict[str, Any], options: Dict[str, Any],
                   producer: Optional[str]) -> Tuple[str, str]:
    body = json.dumps({"name": name, "args": args, "kwargs": kwargs, "options": options,
                       "submitted_at": time.time()})
    meta = json.dumps({"priority": int(options.get("priority", 0)), "key": options.get("key"),
                       "limit": int(options.get("retries", 0)) + CRASHES_FORGIVEN,
                       "producer": producer, "name": name})
    return body, meta


def _letter(message: Message, exc: BaseException, text: str,
            clock: Callable[[], float]) -> Dict[str, Any]:
    now = time.time()
    return {"id": message.id, "name": getattr(message.fn, "name", message.name),
            "args": list(message.args), "kwargs": dict(message.kwargs or {}),
            "options": _options(message), "error": _error(exc, text), "attempts": message.attempts,
            "submitted_at": now - max(0.0, clock() - message.submitted_at), "failed_at": now}


def _local_letter(message: Message, exc: BaseException) -> DeadLetter:
    return DeadLetter(task=Task(message.fn or MissingTaskFunction(message.name), message.args,
                                message.kwargs, name=message.name),
                      task_id=message.id, exception=exc, traceback=None,
                      attempts=message.attempts, submitted_at=time.time(), failed_at=time.time())


def outcome_fields(name: str, priority: int, submitted_at: Optional[float],
                   started_at: Optional[float]) -> Dict[str, Any]:
    """What an outcome carries besides its state, so that it reads back as a task's status."""
    return {"name": name, "priority": priority, "submitted_at": submitted_at,
            "started_at": started_at}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
