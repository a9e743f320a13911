"""The Redis broker: one queue shared by many processes and hosts.

:class:`RedisBroker` keeps a queue's tasks in a Redis server (6.2 or newer),
where every process that shares its ``namespace`` sees them: producers
(web processes) submit, consumers (``python -m taskqueue worker``) run. Every
change of a task's state is one Lua script, atomic on the server
(:mod:`taskqueue.brokers.redis_scripts` lists the keys and what they hold):

- **At least once, fenced.** A worker takes a task with a lease (its
  delivery number as a token) that expires after ``visibility_timeout``
  seconds unless renewed; a live worker renews the leases of what it runs,
  so a long task is never handed out twice while its worker lives. A lease
  that runs out (the worker was killed, or stalled) puts the task back; an
  outcome reported later with the old token is fenced off: it changes
  nothing and is logged. Deliveries are counted: one past ``retries + 2``
  becomes a dead letter saying why.
- **Waits happen in Redis.** Retries and delays wait in a sorted set by due
  time and are moved to the ready set by a script; priorities hold across
  all workers (one sorted set, highest first, submission order within one).
- **Results cross processes as JSON**, kept ``result_ttl`` seconds; a
  failure's type, message and traceback come back as :class:`TaskFailed`.
  The producer hears of each outcome on a channel of its own (no round trip
  per task) and, after a reconnect, reads what it missed.
- **Redis faults.** A submit that cannot reach Redis raises
  :class:`BrokerError` naming the server (never its password); workers and
  producers reconnect with backoff, log it, and go on.

redis-py is imported only when a RedisBroker is made: ``pip install
'taskqueue[redis]'``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import threading
import time
import traceback as traceback_module
import uuid
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple
from urllib.parse import urlsplit, urlunsplit

from ..deadletter import DeadLetter
from ..errors import BrokerError, QueueClosed, QueueFull, TaskFailed, TaskQueueError
from ..message import Message
from ..registry import TaskFunction
from ..retry import Backoff, RetryPolicy
from ..stats import WorkerTally
from ..task import Task, TaskHandle
from ..validate import optional_positive_seconds, whole_number
from .base import Binding, Broker, BrokerCounts, Callbacks, Consumer
from . import redis_scripts as scripts

__all__ = ["RedisBroker", "RedisConsumer", "CRASHES_FORGIVEN", "safe_url"]

log = logging.getLogger(__name__)

CRASHES_FORGIVEN = 2
"""Deliveries past ``retries + CRASHES_FORGIVEN`` make a task a dead letter (as the journal)."""

# How long a blocked receive waits on the server before it looks again
# (a stop is also told through the process's own wake list, at once).
_BLOCK = 1.0
# Reconnecting after a Redis fault: the first wait, and the longest.
_BACKOFF_FIRST, _BACKOFF_MOST = 0.1, 5.0
_NO_TAKE = ("", "", "", "", 0)  # take()'s arguments when no next task is wanted
_HEARTBEAT = 2.0


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise ImportError("RedisBroker needs redis-py: pip install 'taskqueue[redis]'") from None
    return redis


def safe_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs).

    Both places redis-py reads a password from are masked: the user info
    (``redis://user:secret@host``) and the query (``?password=secret``).
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{host}" if ":" in userinfo else f"***@{host}"
        query = "&".join(_masked_parameter(p) for p in parts.query.split("&")) \
            if parts.query else ""
        if (netloc, query) == (parts.netloc, parts.query):
            return url  # nothing to hide
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<a Redis URL>"


def _masked_parameter(parameter: str) -> str:
    name, sep, _ = parameter.partition("=")
    return f"{name}=***" if sep and name.lower() == "password" else parameter


class RedisBroker(Broker):
    """A queue in Redis, shared by every process that uses its namespace.

    Args:
        url: the server, as redis-py reads it (``redis://``, ``rediss://``
            for TLS, ``unix://``), password included if any.
        namespace: the queue's name in Redis; every key is under the hash
            tag ``{namespace}``.
        visibility_timeout: seconds a worker's lease on a task lasts without
            renewal (it is renewed every third of it while the task runs).
        result_ttl: seconds outcomes are kept for producers and lookups.
        socket_timeout: seconds a call to Redis may take (connecting too)
            before it fails with :class:`BrokerError`.

    Raises:
        ImportError: redis-py is not installed (``pip install 'taskqueue[redis]'``).
        TypeError, ValueError: a bad parameter (the message names it).
    """

    shared = True
    blocking_submit = True

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, namespace: str = "taskqueue",
                 visibility_timeout: float = 30.0, result_ttl: int = 86400,
                 socket_timeout: float = 5.0) -> None:
        self._redis = _import_redis()
        if not isinstance(url, str) or not url:
            raise TypeError(f"url must be a non-empty str, got {url!r}")
        if not isinstance(namespace, str) or not namespace or set("{}") & set(namespace):
            raise ValueError(f"namespace must be a non-empty str without braces, got {namespace!r}")
        self.visibility_timeout = optional_positive_seconds("visibility_timeout", visibility_timeout)
        """Seconds a lease lasts without renewal."""
        self.result_ttl = whole_number("result_ttl", result_ttl, minimum=1)
        """Seconds outcomes are kept."""
        timeout = optional_positive_seconds("socket_timeout", socket_timeout)
        self._socket_timeout = max(timeout, _BLOCK + 2)
        self.namespace = namespace
        """The queue's name in Redis."""
        self.url = safe_url(url)
        """The server's URL, without its password."""
        try:
            self._client = self._redis.Redis.from_url(
                url, socket_connect_timeout=timeout, socket_timeout=self._socket_timeout,
                health_check_interval=30)
        except (ValueError, self._redis.RedisError) as exc:
            raise ValueError(f"url {self.url!r} is not a Redis URL redis-py accepts: {exc}") from None
        self._prefix = "{%s}:" % namespace
        self._keys = [self._prefix + "messages"]  # the scripts name the rest from it
        self._scripts = {name: self._client.register_script(getattr(scripts, name))
                         for name in ("ENQUEUE", "FETCH", "FINISH", "RETRY", "HAND_BACK",
                                      "RENEW", "REQUEUE_EXPIRED", "PROMOTE", "REQUEUE_DEAD",
                                      "LEAVE")}
        self._producer = uuid.uuid4().hex
        self._events = self._prefix + "events:"
        self._room_channel = self._prefix + "room"
        self._due_channel = self._prefix + "due"  # a task got a due time somewhere
        self._own_wake = self._prefix + "wake:" + self._producer  # stops this process's receives
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        # This process's submissions, until they end; entered before the script
        # that writes them runs, so a catch-up after (re)subscribing sees every
        # task whose outcome may have been published while nobody listened.
        self._pending: Dict[str, TaskHandle] = {}
        self._unconfirmed: set = set()  # of those, the ones whose script has not answered
        self._foreign: set = set()  # handles of other processes' tasks (a shared key), polled
        self._running: Dict[str, Tuple[str, Message]] = {}  # leased here: id -> (token, message)
        self._binding: Optional[Binding] = None
        self._lookup: Callable[[str], Any] = lambda name: None  # until bound
        self._exempt: Callable[[], bool] = lambda: False
        self._submitted = 0
        self._accepting = True
        self._fetching = False
        self._closed = threading.Event()  # the broker's own threads end
        self._due_changed = threading.Event()  # a task got a due time: promote sooner
        self._listener: Optional[threading.Thread] = None
        self._first_listen = threading.Event()  # the listener subscribed, or failed to, once
        self._listener_done = threading.Event()  # shut down, and no handle left to resolve
        self._maintainer: Optional[threading.Thread] = None
        self._outage = _Outage(self.url)
        self._worker_id = f"{socket.gethostname()}:{os.getpid()}:{self._producer[:8]}"
        self._slots = itertools.count()  # one per consumer, for its inbox

    # -- binding and lifecycle ---------------------------------------------------------

    def bind(self, binding: Binding) -> None:
        """Become the broker of one queue (its name is only for messages: the namespace rules)."""
        if self._binding is not None:
            raise RuntimeError(f"this broker already serves {self._binding.name!r}; "
                               "give each TaskQueue a broker of its own")
        self._binding = binding
        self._lookup = binding.lookup
        self._exempt = binding.exempt

    def open(self) -> None:
        """Start the producer side: the thread that hears of this process's outcomes.

        Returns once it has subscribed (or failed to reach Redis), so that
        every step of the tasks submitted next is heard, not only their end.
        """
        with self._lock:
            if self._listener is None:
                self._listener = threading.Thread(target=self._listen, daemon=True,
                                                  name=f"{self._binding_name()}-results")
                self._listener.start()
            listener = self._listener
        while not self._first_listen.wait(0.05):
            if not listener.is_alive():  # its start was cut short (a signal): none to wait for
                return

    def start(self) -> None:
        """Start consuming: leases are renewed, due tasks promoted, lost leases reclaimed."""
        self.open()
        with self._lock:
            if self._maintainer is not None:
                return
            self._fetching = True
            self._maintainer = threading.Thread(target=self._maintain, daemon=True,
                                                name=f"{self._binding_name()}-maintenance")
            self._maintainer.start()

    def threads(self) -> FrozenSet[threading.Thread]:
        """The result listener and the maintenance thread, once started."""
        return frozenset(t for t in (self._listener, self._maintainer) if t is not None)

    def shutdown(self) -> None:
        """Stop the broker's threads and close its connections; idempotent.

        Handles of this process's tasks that still run elsewhere keep
        resolving: the result listener (a daemon thread, which never holds
        up the interpreter's exit) stays until the last of them has ended,
        then closes the connections.
        """
        self._closed.set()
        self._due_changed.set()
        self._fetching = False
        with self._lock:
            if not self._pending:
                self._listener_done.set()
        for thread in self.threads():
            if thread is threading.current_thread() or not thread.is_alive():
                continue  # not one whose start a signal cut short
            if thread is self._listener and not self._listener_done.is_set():
                continue  # it ends with the last handle
            thread.join(_BLOCK + 5)
        self._forget_worker()
        if self._listener_done.is_set() or self._listener is None:
            self._close_client()

    def _close_client(self) -> None:
        # Only the idle connections: another thread may be in a call on one
        # (a cancel after shutdown), and cutting it would break that call.
        try:
            self._client.connection_pool.disconnect(inuse_connections=False)
        except self._redis.RedisError:  # pragma: no cover - nothing left to lose
            pass

    def _binding_name(self) -> str:
        return self._binding.name if self._binding is not None else self.namespace

    # -- producers ---------------------------------------------------------------------

    def enqueue(self, message: Message, block: bool = True,
                timeout: Optional[float] = None) -> TaskHandle:
        """Write the task to Redis (one script), waiting while the queue is full.

        Raises:
            TypeError: the task is not a task function registered on this
                queue, or its arguments are not JSON; nothing is written.
            QueueFull: no room within ``timeout``; QueueClosed: closed.
            BrokerError: Redis cannot be reached: nothing was taken in, unless
                the connection broke after Redis ran the script (its reply
                lost), in which case the task was taken in and runs, and
                its outcome reaches no handle (at least once, as every
                broker over a network).
        """
        if not self._accepting:
            raise self.closed_error()
        body, meta = self._encode(message)
        task_id = uuid.uuid4().hex
        message.id = task_id
        handle = message.handle
        handle._id = task_id
        delay = "" if message.due is None else str(max(0, int((message.due - self._clock()) * 1000)))
        args = [self._events, task_id, body, meta, message.priority, delay, message.key or "",
                self._maxsize(), "0" if self._exempt() else "1"]
        if message.due is not None:
            handle._set_scheduled(True)
        with self._lock:
            self._pending[task_id] = handle
            self._unconfirmed.add(task_id)
        try:
            code, holder = self._enqueue_waiting(args, block, timeout)
        except BaseException:
            with self._lock:
                self._forget_locked(task_id)
            raise
        finally:
            with self._lock:
                self._unconfirmed.discard(task_id)
        if code == 1:
            with self._lock:
                self._submitted += 1
            return handle
        with self._lock:
            self._forget_locked(task_id)
        return self._follow(holder)

    def submitted_here(self) -> int:
        """How many tasks this process has put in Redis."""
        return self._submitted

    def _enqueue_waiting(self, args: List[Any], block: bool,
                         timeout: Optional[float]) -> Tuple[int, str]:
        self.open()  # outcomes are heard from now on
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            code, holder = self._call("ENQUEUE", args)
            if int(code) != 0:
                return int(code), _text(holder)
            remaining = None if deadline is None else deadline - time.monotonic()
            if not block or (remaining is not None and remaining <= 0):
                raise QueueFull(f"{self._binding_name()} is full ({self._maxsize()} tasks "
                                "waiting in Redis); add workers, raise maxsize, or wait "
                                "longer (submit_timeout)")
            with self._room:  # told by a worker that takes from a full queue; looked at again
                self._room.wait(0.25 if remaining is None else min(0.25, remaining))
            if not self._accepting:
                raise self.closed_error()

    def _follow(self, task_id: str) -> TaskHandle:
        # A live task holds the key: its handle if this process submitted it,
        # else a handle that follows it by polling its outcome.
        with self._lock:
            handle = self._pending.get(task_id)
            if handle is not None:
                return handle
            handle = TaskHandle("(task of another process)", self._cancel_remote)
            handle._id = task_id
            self._pending[task_id] = handle
            self._foreign.add(task_id)
        return handle

    def _encode(self, message: Message) -> Tuple[str, str]:
        fn = message.fn
        if not isinstance(fn, TaskFunction) or self._lookup(fn.name) is not fn:
            raise TypeError(
                f"{self._binding_name()} is on Redis, so it only takes task functions registered "
                f"on it with @queue.task (a worker finds them by name); got {fn!r}")
        task = message.task
        if task is not None and task.retry_on is not None and task.retry_on != fn.task().retry_on:
            raise TypeError(f"retry_on set for one submission of {fn.name!r} cannot cross "
                            "processes (exception classes are not sent); set it in "
                            "@queue.task(retry_on=...)")
        args, kwargs = _round_trip(list(message.args), dict(message.kwargs or {}))
        message.args, message.kwargs = tuple(args), kwargs or None
        return _body_and_meta(fn.name, args, kwargs, _options(message), self._producer)

    def when_room(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` soon: asubmit then tries (in a thread) and waits there."""
        callback()

    # -- hearing of outcomes (the producer's thread) ------------------------------------

    def _listen(self) -> None:
        try:
            self._listen_until_done()
        finally:
            if self._closed.is_set():
                self._close_client()

    def _listen_until_done(self) -> None:
        backoff = _BACKOFF_FIRST
        while not self._listener_done.is_set():
            pubsub = None
            try:
                pubsub = self._client.pubsub()
                self._subscribe(pubsub)
                self._catch_up(everything=True)
                self._first_listen.set()
                self._outage.over()
                backoff = _BACKOFF_FIRST
                polled = time.monotonic()
                while not self._listener_done.is_set():
                    event = pubsub.get_message(timeout=0.25)
                    if event is not None:
                        self._heard(event)
                    if self._foreign and time.monotonic() - polled > 0.25:
                        self._catch_up(everything=False)
                        polled = time.monotonic()
            except self._redis.RedisError as exc:
                self._first_listen.set()  # a submit meanwhile fails on its own, naming Redis
                self._outage.began(exc)
                self._listener_done.wait(backoff)
                backoff = min(_BACKOFF_MOST, backoff * 2)
            except Exception:  # a bug: log it and go on, rather than stop hearing outcomes
                self._first_listen.set()
                log.exception("the result listener of %s failed; it starts again", self.url)
                self._listener_done.wait(backoff)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # pragma: no cover
                        pass

    def _subscribe(self, pubsub: Any) -> None:
        # Subscribed once Redis confirms each channel: a message published
        # after that reaches this process. One that comes meanwhile is heard.
        channels = (self._events + self._producer, self._room_channel, self._due_channel)
        pubsub.subscribe(*channels)
        confirmed = 0
        while confirmed < len(channels):
            event = pubsub.get_message(timeout=self._socket_timeout)
            if event is None:
                raise self._redis.TimeoutError("no confirmation of a subscribe")
            if event["type"] == "subscribe":
                confirmed += 1
            else:
                self._heard(event)

    def _heard(self, event: Dict[str, Any]) -> None:
        if event.get("type") != "message":
            return
        channel = _text(event.get("channel"))
        if channel == self._due_channel:
            self._due_changed.set()
            return
        if channel == self._room_channel:
            with self._room:
                self._room.notify_all()
            return
        self._apply(json.loads(event["data"]))

    def _apply(self, outcome: Dict[str, Any]) -> None:
        # One step of a task this process follows: the handle moves with it.
        task_id, state = outcome.get("id"), outcome.get("state")
        with self._lock:
            handle = self._pending.get(task_id)  # type: ignore[arg-type]
        if handle is None:
            return
        if state == "running":
            handle._begin(int(outcome.get("attempts", handle.attempts + 1)))
            return
        if state in ("pending", "scheduled"):
            handle._back_to_pending(scheduled=state == "scheduled")
            return
        with self._lock:
            self._forget_locked(task_id)  # type: ignore[arg-type]
        handle._attempts = int(outcome.get("attempts", handle.attempts))
        if state == "succeeded":
            handle._succeed(outcome.get("result"))
        elif state == "failed":
            handle._fail(_failure(outcome.get("error") or {}))
        elif state == "cancelled":
            handle._run_callbacks(handle._mark_cancelled())

    def _forget_locked(self, task_id: str) -> Optional[TaskHandle]:
        # This process follows the task no more (it ended, or was never
        # taken in). Once shut down, the listener ends with the last one.
        handle = self._pending.pop(task_id, None)
        self._foreign.discard(task_id)
        if self._closed.is_set() and not self._pending:
            self._listener_done.set()
        return handle

    def _catch_up(self, *, everything: bool) -> None:
        # Outcomes this process may have missed (it was disconnected, or it
        # follows another process's task): read from their result keys. A
        # task Redis holds neither as a message nor as an outcome is lost
        # (a restart without persistence, a flush, an outcome past
        # result_ttl): its handle fails rather than wait for ever. Ids whose
        # script had not answered when this began may not be written yet.
        with self._lock:
            ids = list(self._pending if everything else self._foreign)
            unsure = set(self._unconfirmed)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            with self._client.pipeline(transaction=True) as pipe:  # one moment's view
                pipe.mget([self._result_key(i) for i in chunk])
                pipe.hmget(self._key("messages"), chunk)
                outcomes, messages = pipe.execute()
            for task_id, raw, body in zip(chunk, outcomes, messages):
                if raw is not None:
                    self._apply(json.loads(raw))
                elif body is None and task_id not in unsure:
                    self._lost(task_id)

    def _lost(self, task_id: str) -> None:
        with self._lock:
            handle = self._forget_locked(task_id)
        if handle is None or handle.done():
            return
        log.error("task %s (%s) is lost: Redis at %s holds neither it nor its outcome (it "
                  "restarted without persistence, was flushed, or the outcome outlived "
                  "result_ttl)", handle.name, task_id, self.url)
        handle._fail(BrokerError(
            f"task {handle.name} ({task_id}) is lost: Redis at {self.url} holds neither it nor "
            "its outcome (a restart without persistence, a flush, or an outcome older than "
            "result_ttl)"))

    # -- consumers ------------------------------------------------------------------------

    def consumer(self, tally: WorkerTally) -> RedisConsumer:
        """A consumer for one worker thread of this process."""
        return RedisConsumer(self, tally)

    def _fetch(self, consumer: RedisConsumer) -> Optional[Message]:
        # The task handed to this consumer, or the first ready one, leased to
        # it; else None, and it is noted as waiting (see redis_scripts).
        reply = self._call("FETCH", [self._events, *consumer.take_args(), consumer.inbox])
        consumer._waiting = not reply
        return self._leased_message(reply) if reply else None

    def _leased_message(self, reply: List[Any]) -> Optional[Message]:
        # A task leased to this process, from a script's reply or an inbox
        # item, as a message of its own. One it cannot run (its name is not
        # registered here, or it was delivered too often) is buried: None.
        if len(reply) == 1:  # an inbox item: id, delivery, meta, body on lines
            task_id, delivery_raw, meta_raw, body_raw = _text(reply[0]).split("\n", 3)
        else:
            task_id, body_raw, delivery_raw, meta_raw = (_text(part) for part in reply)
        delivery = int(delivery_raw)
        try:
            body, meta = json.loads(body_raw), json.loads(meta_raw)
            message = self._message(task_id, body, delivery)
            limit = int(meta["limit"])
        except Exception as exc:  # another version wrote it, or a hand: never a crash loop
            message = self._message(task_id, {"name": "(unreadable)"}, delivery)
            with self._lock:
                self._running[task_id] = (str(delivery), message)
            self._bury(message, delivery, TaskQueueError(
                f"task {task_id} cannot be read by this worker ({self._worker_id}): "
                f"{type(exc).__name__}: {exc}"))
            return None
        with self._lock:
            self._running[task_id] = (str(delivery), message)
        if message.fn is None:
            self._bury(message, delivery, TaskQueueError(
                f"no task function named {body['name']!r} is registered in this worker "
                f"({self._worker_id}); register it with @queue.task where workers import it"))
            return None
        if delivery > limit:  # its deliveries pass retries + 2
            self._bury(message, delivery, TaskQueueError(
                f"task {body['name']} ({task_id}) was delivered {delivery - 1} times, past its "
                f"retries + {CRASHES_FORGIVEN}, without an outcome; it may be what stops its "
                "workers, so it is not run again (requeue the dead letter to try once more)"))
            return None
        return message

    def _message(self, task_id: str, body: Dict[str, Any], delivery: int) -> Message:
        options = body.get("options") or {}
        name = options.get("name") or body["name"]
        fn = self._lookup(body["name"])
        backoff = options.get("backoff")
        base = fn.task() if fn is not None else None
        retry_on = base.retry_on if base is not None and base.retry_on is not None else (Exception,)
        policy = RetryPolicy(int(options.get("retries", 0)),
                             Backoff(**backoff) if backoff else Backoff(), retry_on)
        handle = TaskHandle(name)  # this process's own view of the task
        handle._id = task_id
        message = handle._message = Message(fn, tuple(body.get("args") or ()),
                                            body.get("kwargs") or None, name, policy, handle)
        message.id = task_id
        message.priority = int(options.get("priority", 0))
        message.key = options.get("key")
        message.time_limit = options.get("time_limit")
        message.submitted_at = self._clock() - max(0.0, time.time() - body.get("submitted_at",
                                                                                time.time()))
        message.attempts = delivery - 1  # the consumer begins this delivery's attempt
        return message

    def _leased(self, task_id: str) -> Optional[str]:
        with self._lock:
            held = self._running.get(task_id)
        return None if held is None else held[0]

    def _release(self, task_id: str) -> None:
        with self._lock:
            self._running.pop(task_id, None)

    def _finish(self, message: Message, state: str, outcome: Dict[str, Any],
                letter: Optional[Dict[str, Any]] = None,
                then: Optional[RedisConsumer] = None) -> Optional[Message]:
        # The task's end, reported under this process's lease (fenced if
        # another delivery holds it); in the same script, the next task for
        # consumer ``then``, returned.
        token = self._leased(message.id)
        self._release(message.id)
        if token is None:
            return None
        outcome = {"id": message.id, "state": state, "attempts": message.attempts,
                   "finished_at": time.time(), **outcome}
        reply = self._call("FINISH", [self._events, message.id, token, json.dumps(outcome),
                                      self.result_ttl, state,
                                      "" if letter is None else json.dumps(letter),
                                      self._dead_letter_limit(), int(time.time() * 1000),
                                      *self._take_args(then)])
        if int(reply[0]) == 0:  # ended by the delivery that took over, or lost by Redis
            log.warning("task %s (%s): its lease was taken over and another delivery ended "
                        "it (or Redis restarted without persistence and lost it); its %s is "
                        "ignored", message.name, message.id, state)
            return None
        if int(reply[0]) != 1:  # another delivery holds the lease
            log.warning("task %s (%s): its lease was taken over (this worker stalled past "
                        "visibility_timeout); its %s is ignored, another delivery owns it",
                        message.name, message.id, state)
            return None
        return self._next_for(then, reply)

    def _take_args(self, consumer: Optional[RedisConsumer]) -> List[Any]:
        # What a script needs to take the next task for ``consumer`` (none
        # once this process stops fetching).
        if consumer is None or not self._fetching:
            return list(_NO_TAKE)
        return consumer.take_args()

    def _bury(self, message: Message, delivery: int, exc: BaseException) -> None:
        # A dead letter for a task this process will not run.
        message.attempts = delivery
        log.error("task %s (%s) is a dead letter: %s", message.name, message.id, exc)
        self._finish(message, "failed", {"error": _error(exc, "")},
                     _letter(message, exc, "", self._clock))

    def _retry(self, message: Message, delay: float,
               then: Optional[RedisConsumer] = None) -> Optional[Message]:
        token = self._leased(message.id)
        self._release(message.id)
        if token is None:
            return None
        state = "scheduled" if delay > 0 else "pending"
        reply = self._call("RETRY", [self._events, message.id, token, int(delay * 1000),
                                     json.dumps({"id": message.id, "state": state,
                                                 "attempts": message.attempts}),
                                     *self._take_args(then)])
        if int(reply[0]) == -1:
            log.warning("task %s (%s): its lease was taken over; its retry is ignored",
                        message.name, message.id)
            return None
        return self._next_for(then, reply)

    def _next_for(self, consumer: Optional[RedisConsumer], reply: List[Any]) -> Optional[Message]:
        # The task a script took for ``consumer`` with an outcome, if any;
        # if it found none, the script noted the consumer as a waiter.
        if consumer is None:
            return None
        took = reply[1] if len(reply) > 1 else None
        consumer._waiting = not took and self._fetching
        return self._leased_message(took) if took else None

    def _hand_back(self, message: Message, *, started: bool) -> None:
        # Back to Redis at once; an attempt that started (and is cut short)
        # still counts as a delivery, one that did not start does not.
        token = self._leased(message.id)
        self._release(message.id)
        if token is not None:
            self._call("HAND_BACK", [self._events, message.id, token,
                                     json.dumps({"id": message.id, "state": "pending"}),
                                     "0" if started else "1"])

    def hand_back_running(self) -> int:
        """Hand every task this process runs back to Redis at once (its worker is stopping).

        For a process that stops before its running attempts end (the
        worker command past its grace period): another worker starts them
        without waiting for their leases to run out. The cut-short attempts
        count as deliveries (one taken for a thread that had not begun it yet
        does not). Returns how many.
        """
        with self._lock:
            held = [message for _, message in self._running.values()]
        for message in held:
            try:
                self._hand_back(message, started=message.handle.running())
            except BrokerError:
                pass  # its lease runs out instead
        return len(held)

    # -- the maintenance thread (consuming processes) ------------------------------------------

    def _maintain(self) -> None:
        renew_every = self.visibility_timeout / 3
        reclaim_every = min(1.0, self.visibility_timeout / 4)
        next_renew = next_reclaim = next_beat = 0.0
        backoff = _BACKOFF_FIRST
        while not self._closed.is_set():
            try:
                now = time.monotonic()
                if now >= next_renew:
                    self._renew()
                    next_renew = now + renew_every
                if now >= next_reclaim:
                    self._call("REQUEUE_EXPIRED", [self._events, 100])
                    next_reclaim = now + reclaim_every
                if now >= next_beat:
                    self._heartbeat()
                    next_beat = now + _HEARTBEAT
                _, next_due_ms = self._call("PROMOTE", [self._events, 100])
                self._outage.over()
                backoff = _BACKOFF_FIRST
                wait = min(next_renew, next_reclaim, next_beat) - time.monotonic()
                if int(next_due_ms) >= 0:
                    wait = min(wait, int(next_due_ms) / 1000)
                # Woken early when a task gets a due time (the listener hears it).
                self._due_changed.wait(max(0.005, min(wait, 1.0)))
                self._due_changed.clear()
            except (BrokerError, self._redis.RedisError) as exc:
                self._outage.began(exc)
                self._closed.wait(backoff)
                backoff = min(_BACKOFF_MOST, backoff * 2)
            except Exception:
                log.exception("the maintenance thread of %s failed; it starts again", self.url)
                self._closed.wait(backoff)

    def _renew(self) -> None:
        with self._lock:
            held = [(task_id, token) for task_id, (token, _) in self._running.items()]
        if held:
            self._call("RENEW", [self._events, int(self.visibility_timeout * 1000),
                                 *[x for pair in held for x in pair]])

    def _heartbeat(self) -> None:
        with self._lock:
            running = len(self._running)
        now = time.time()
        self._client.hset(self._key("workers"), self._worker_id,
                          json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                      "running": running, "seen": now}))

    def _forget_worker(self) -> None:
        if self._maintainer is None:
            return
        try:
            self._client.hdel(self._key("workers"), self._worker_id)
        except self._redis.RedisError:
            pass

    def workers(self) -> List[Dict[str, Any]]:
        """The consuming processes heard of lately: host, pid, running, seen (epoch)."""
        raw = self._guarded(lambda: self._client.hgetall(
            self._key("workers")))
        now = time.time()
        found = [dict(json.loads(v), id=_text(k)) for k, v in raw.items()]
        return sorted((w for w in found if now - w.get("seen", 0) < 5 * _HEARTBEAT),
                      key=lambda w: w["id"])

    # -- cancelling, sealing, stopping ----------------------------------------------------------

    def withdraw(self, handle: TaskHandle) -> Optional[Tuple[Message, Callbacks]]:
        """Cancel a task still waiting in Redis (queued or scheduled)."""
        outcome = {"id": handle.id, "state": "cancelled", "attempts": handle.attempts,
                   "finished_at": time.time()}
        result = self._call("FINISH", [self._events, handle.id, "", json.dumps(outcome),
                                       self.result_ttl, "cancelled", "", self._dead_letter_limit(),
                                       0, *_NO_TAKE])
        if int(result[0]) != 1:
            return None
        with self._lock:
            self._forget_locked(handle.id)
        callbacks = handle._mark_cancelled()
        message = handle._message or Message(None, (), None, handle.name, RetryPolicy(
            0, Backoff.none(), (Exception,)), handle)
        return message, callbacks or []

    def _cancel_remote(self, handle: TaskHandle) -> bool:
        withdrawn = self.withdraw(handle)
        if withdrawn is None:
            return handle.cancelled()
        handle._run_callbacks(withdrawn[1])
        return True

    def cancelled(self, message: Message) -> None:
        """Counted in Redis by the cancel itself."""

    def ack(self, message: Message) -> None:
        """Nothing: Redis forgot the cancelled task in the same script."""

    def seal(self) -> List[Message]:
        """Stop taking tasks here, and return this process's own submissions still waiting.

        Nothing of other processes is touched: the queue lives on in Redis.
        """
        self._accepting = False
        self._fetching = False
        self._wake_own_consumers()
        with self._lock:
            handles = [h for h in self._pending.values() if h._message is not None]
        return [h._message for h in handles]  # type: ignore[misc]

    def close(self) -> None:
        """Refuse submits from this process, and fetch no more tasks here.

        A shutdown on a shared broker is a worker's graceful stop: what runs
        here finishes, what waits in Redis stays there for the other workers.
        A submit waiting for room is woken (and refused).
        """
        self._accepting = False
        if self._fetching:
            self.stop_consumers()
        with self._room:
            self._room.notify_all()

    @property
    def accepting(self) -> bool:
        """Whether this process may still submit."""
        return self._accepting

    def wait_idle(self, timeout: Optional[float]) -> bool:
        """Wait until this process's submissions have ended and nothing runs here.

        Once the queue is closed in this process (a shutdown), only what runs
        here is waited for: its submissions still in Redis are the other
        workers' to run, and shutting down does not wait for them.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                idle = not self._running and (not self._accepting or not self._pending)
            if idle:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            # Outcomes arrive on the listener's thread, from Redis: looked at
            # every 10 ms rather than signalled, to keep the hot path lock-light.
            self._closed.wait(0.01 if deadline is None
                              else min(0.01, max(0.0, deadline - time.monotonic())))

    def stop_consumers(self) -> None:
        """This process's consumers take nothing more; their receive() returns None."""
        self._fetching = False
        self._wake_own_consumers()

    def _wake_own_consumers(self) -> None:
        try:
            with self._client.pipeline(transaction=True) as pipe:  # never without its TTL
                pipe.lpush(self._own_wake, *(["1"] * 256))  # one per thread
                pipe.expire(self._own_wake, 60)
                pipe.execute()
        except self._redis.RedisError:
            pass  # they look again within _BLOCK seconds

    def closed_error(self) -> QueueClosed:
        """The error a producer gets once the queue is closed here."""
        return QueueClosed(f"{self._binding_name()} is shut down in this process and accepts "
                           "no new tasks")

    # -- what is kept ----------------------------------------------------------------------------

    def recover(self) -> List[TaskHandle]:
        """Nothing to take back: Redis keeps every task through a restart of this process."""
        return []

    def dead_letters(self) -> List[DeadLetter]:
        """The dead letters in Redis, oldest failure first (every process sees them)."""
        return [self._dead_letter(raw) for raw in self._raw_dead_letters()]

    def _raw_dead_letters(self) -> List[Dict[str, Any]]:
        def read() -> Tuple[Any, Any]:
            with self._client.pipeline(transaction=False) as pipe:
                pipe.zrange(self._key("dead_order"), 0, -1)
                pipe.hgetall(self._key("dead"))
                return tuple(pipe.execute())  # type: ignore[return-value]
        order, letters = self._guarded(read)
        by_id = {_text(k): json.loads(v) for k, v in letters.items()}
        return [by_id[_text(i)] for i in order if _text(i) in by_id]

    def _dead_letter(self, raw: Dict[str, Any]) -> DeadLetter:
        fn = self._lookup(raw["name"])
        error = raw.get("error") or {}
        options = raw.get("options") or {}
        task = Task(fn or _Unregistered(raw["name"]), raw.get("args") or (),
                    raw.get("kwargs") or None, name=options.get("name") or raw["name"],
                    priority=int(options.get("priority", 0)))
        return DeadLetter(task=task, task_id=raw["id"], exception=_failure(error),
                          traceback=error.get("traceback") or "", attempts=int(raw["attempts"]),
                          submitted_at=float(raw.get("submitted_at") or 0.0),
                          failed_at=float(raw.get("failed_at") or 0.0))

    def requeue(self, letter: DeadLetter, message: Message, *, block: bool = True,
                timeout: Optional[float] = None) -> TaskHandle:
        """Forget ``letter`` and take its task in anew, in one script (once, across processes)."""
        body, meta = self._encode(message)
        task_id = uuid.uuid4().hex
        message.id = message.handle._id = task_id
        with self._lock:
            self._pending[task_id] = message.handle
            self._unconfirmed.add(task_id)
        self.open()
        try:
            code, holder = self._call("REQUEUE_DEAD", [
                self._events, letter.task_id, task_id, body, meta, message.priority, "",
                message.key or "", self._maxsize(), "0"])
        except BaseException:
            with self._lock:
                self._forget_locked(task_id)
            raise
        finally:
            with self._lock:
                self._unconfirmed.discard(task_id)
        code = int(code)
        if code == 1:
            return message.handle
        with self._lock:
            self._forget_locked(task_id)
        if code == -1:
            raise ValueError(f"dead letter {letter.task_id} is not held: it was requeued or "
                             "purged already (here or by another process)")
        return self._follow(_text(holder))

    def requeue_dead(self, name: Optional[str] = None) -> int:
        """Take every dead letter (only ``name``'s if given) in again as a new task.

        For a process that does not register the task functions (the
        command line): each letter's stored task is sent back as it was,
        its attempts counted from zero. Each letter is requeued once, even
        if several processes do this at once. Returns how many.
        """
        count = 0
        for raw in self._raw_dead_letters():
            if name is not None and raw.get("name") != name:
                continue
            body, meta = _body_and_meta(raw["name"], raw.get("args") or [],
                                        raw.get("kwargs") or {}, raw.get("options") or {}, None)
            options = raw.get("options") or {}
            code, _ = self._call("REQUEUE_DEAD", [
                self._events, raw["id"], uuid.uuid4().hex, body, meta,
                int(options.get("priority", 0)), "", options.get("key") or "", 0, "0"])
            count += int(code) == 1
        return count

    def inspect(self) -> Dict[str, Any]:
        """What waits, runs and failed in Redis now, for the command line and dashboards.

        Returns:
            ``pending`` (priority -> count), ``scheduled`` (count), ``next_due``
            (seconds until the next scheduled one, or None), ``running`` (a
            list of ``id, name, delivery, lease`` in seconds left), ``dead``
            (count), ``workers`` (see :meth:`workers`) and ``counters``.
        """
        def read() -> List[Any]:
            with self._client.pipeline(transaction=False) as pipe:
                pipe.zrange(self._key("ready"), 0, 99_999, withscores=True)
                pipe.zcard(self._key("delayed"))
                pipe.zrange(self._key("delayed"), 0, 0, withscores=True)
                pipe.zrange(self._key("leases"), 0, -1, withscores=True)
                pipe.hgetall(self._key("meta"))
                pipe.hgetall(self._key("tokens"))
                pipe.hlen(self._key("dead"))
                pipe.hgetall(self._key("stats"))
                pipe.time()
                return list(pipe.execute())
        ready, scheduled, first_due, leases, metas, tokens, dead, stats, now = self._guarded(read)
        now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
        pending: Dict[int, int] = {}
        for _, score in ready:
            pending[int(-score)] = pending.get(int(-score), 0) + 1
        names = {_text(k): json.loads(v).get("name") for k, v in metas.items()}
        running = [{"id": _text(i), "name": names.get(_text(i)),
                    "delivery": int(tokens.get(i, 0) or 0),
                    "lease": max(0.0, (score - now_ms) / 1000)} for i, score in leases]
        return {"pending": dict(sorted(pending.items(), reverse=True)), "scheduled": int(scheduled),
                "next_due": max(0.0, (first_due[0][1] - now_ms) / 1000) if first_due else None,
                "running": running, "dead": int(dead), "workers": self.workers(),
                "counters": {_text(k): int(v) for k, v in stats.items() if _text(k) != "seq"}}

    def purge_dead(self) -> int:
        """Forget every dead letter in Redis."""
        def purge() -> int:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.hlen(self._key("dead"))
                pipe.delete(self._key("dead"), self._key("dead_order"))
                return int(pipe.execute()[0])
        return self._guarded(purge)  # type: ignore[no-any-return]

    def counts(self) -> BrokerCounts:
        """The queue's totals across every process (one round trip)."""
        def read() -> List[Any]:
            with self._client.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._key("stats"))
                pipe.zcard(self._key("leases"))
                pipe.hlen(self._key("dead"))
                return list(pipe.execute())
        stats, running, dead = self._guarded(read)
        counters = {_text(k): int(v) for k, v in stats.items()}
        return BrokerCounts(
            submitted=counters.get("submitted", 0), cancelled=counters.get("cancelled", 0),
            dead_letters=int(dead), dead_letters_dropped=counters.get("dead_letters_dropped", 0),
            succeeded=counters.get("succeeded", 0), failed=counters.get("failed", 0),
            retried=counters.get("retried", 0), running=int(running))

    def claim_tick(self, name: str, tick: int, interval: float) -> bool:
        """Whether this process fires tick ``tick`` of periodic ``name`` (one process does).

        Only a consuming process claims a tick: a producer-only one (a web
        process that imports the tasks module) never fires periodic runs.
        """
        if not self._fetching:
            return False
        key = f"{self._prefix}tick:{name}:{tick}"
        ttl = max(60, int(interval * 3))
        return bool(self._guarded(lambda: self._client.set(key, self._worker_id, nx=True, ex=ttl)))

    # -- Redis calls -----------------------------------------------------------------------------

    def _call(self, script: str, args: List[Any]) -> Any:
        return self._guarded(lambda: self._scripts[script](keys=self._keys, args=args))

    def _guarded(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except self._redis.RedisError as exc:
            raise BrokerError(f"Redis at {self.url} cannot be used: {type(exc).__name__}: "
                              f"{_safe_text(exc, self)}") from None

    def _key(self, name: str) -> str:
        return self._prefix + name

    def _result_key(self, task_id: str) -> str:
        return f"{self._prefix}result:{task_id}"

    def _maxsize(self) -> int:
        return self._binding.maxsize if self._binding is not None else 0

    def _dead_letter_limit(self) -> int:
        return self._binding.dead_letter_limit if self._binding is not None else 10_000

    def _clock(self) -> float:
        return self._binding.clock() if self._binding is not None else time.monotonic()

    def __repr__(self) -> str:
        return f"<RedisBroker {self.url} namespace={self.namespace!r}>"


class RedisConsumer(Consumer):
    """One worker thread's side of a :class:`RedisBroker`.

    Each has a slot of its own in Redis: while it waits, a task made ready
    anywhere is leased to it and pushed to its inbox, so its blocking pop
    returns the task itself; and the script that reports an outcome takes
    its next task too. A task costs a worker two round trips to Redis.
    """

    def __init__(self, broker: RedisBroker, tally: WorkerTally) -> None:
        self._broker = broker
        self.tally = tally
        self.current: Optional[Message] = None
        slot = f"{broker._worker_id}:{next(broker._slots)}"
        visibility_ms = int(broker.visibility_timeout * 1000)
        self._waiter = f"{visibility_ms}|{slot}"
        self.inbox = broker._key("inbox:" + slot)
        """This consumer's inbox key in Redis."""
        self._blocking = [self.inbox, broker._own_wake]
        # take()'s arguments (redis_scripts): noted as waiting a little longer
        # than one blocking pop lasts, so a live waiter never lapses.
        self._take = [visibility_ms, self._waiter, int((_BLOCK + 1) * 1000),
                      broker._room_channel, broker._maxsize()]
        self._next: Optional[Message] = None  # taken with the last outcome
        self._waiting = False  # noted in Redis as a waiter by the last script

    def take_args(self) -> List[Any]:
        """What a script needs to take a task for this consumer (see redis_scripts)."""
        return self._take

    def receive(self) -> Optional[Message]:
        """The next task leased to this process, started; None once stopped."""
        broker = self._broker
        backoff = _BACKOFF_FIRST
        while broker._fetching:
            try:
                message, self._next = self._next, None
                if message is None and not self._waiting:
                    message = broker._fetch(self)  # if none ready, it notes this one waits
                if message is None and self._waiting:
                    self._waiting = False  # looked at again after one blocking pop
                    message = self._wait()
                if message is None:
                    continue
            except (BrokerError, broker._redis.RedisError) as exc:
                broker._outage.began(exc)
                broker._closed.wait(backoff)
                backoff = min(_BACKOFF_MOST, backoff * 2)
                continue
            broker._outage.over()
            return self._started(message)
        self._leave()
        return None

    def _wait(self) -> Optional[Message]:
        # Block on the inbox (or this process's stop) for at most _BLOCK s.
        popped = self._broker._client.blpop(self._blocking, timeout=_BLOCK)
        if popped is None or _text(popped[0]) != self.inbox:
            return None
        return self._broker._leased_message([popped[1]])

    def _started(self, message: Message) -> Message:
        message.attempts += 1
        message.handle._begin(message.attempts)
        self.current = message
        tally = self.tally
        tally.running = 1
        if message.attempts > 1:
            tally.retried += 1
        return message

    def _leave(self) -> None:
        # This thread takes no more: no longer a waiter, and what was handed
        # to it but not started goes back at once, for another worker.
        message, self._next = self._next, None
        self._waiting = False
        broker = self._broker
        try:
            if message is not None:
                broker._hand_back(message, started=False)
            broker._call("LEAVE", [broker._events, self._waiter, self.inbox])
        except BrokerError:
            pass  # the leases run out instead

    def resume(self, message: Message) -> bool:
        """Never used: a Redis retry goes back through Redis (see reschedule)."""
        return False

    def succeeded(self, message: Message, result: Any) -> None:
        """Report the result to Redis (fenced if the lease was lost), then resolve locally."""
        tally = self.tally
        tally.running = 0
        try:
            encoded = json.loads(json.dumps(result))
        except (TypeError, ValueError) as exc:
            failure = TypeError(f"the task's result cannot cross processes as JSON "
                                f"({type(exc).__name__}: {exc})")
            self.failed(message, _local_letter(message, failure))
            return
        tally.succeeded += 1
        self._reported(message, "succeeded", {"result": encoded})
        message.handle._succeed(result)

    def failed(self, message: Message, letter: DeadLetter) -> None:
        """Report the failure and its dead letter to Redis, then resolve locally."""
        tally = self.tally
        tally.running = 0
        tally.failed += 1
        exc = letter.exception
        text = letter.traceback
        self._reported(message, "failed", {"error": _error(exc, text)},
                       _letter(message, exc, text, self._broker._clock))
        message.handle._fail(exc)

    def _reported(self, message: Message, state: str, outcome: Dict[str, Any],
                  letter: Optional[Dict[str, Any]] = None) -> None:
        try:
            self._next = self._broker._finish(message, state, outcome, letter, then=self)
        except BrokerError as exc:
            # The lease runs out and another worker runs it again: at least once.
            log.error("task %s (%s): its outcome could not be reported (%s); its lease will "
                      "run out and it runs again", message.name, message.id, exc)

    def retrying(self, message: Message, delay: float) -> None:
        """Send the task back to Redis to wait out its backoff there."""
        self.tally.running = 0
        try:
            self._next = self._broker._retry(message, delay, then=self)
        except BrokerError as exc:
            log.error("task %s (%s): its retry could not be recorded (%s); its lease will "
                      "run out and it runs again", message.name, message.id, exc)
        message.handle._back_to_pending(scheduled=delay > 0)

    def reschedule(self, message: Message, delay: float) -> Optional[Message]:
        """Nothing more: ``retrying`` put it in Redis, where any worker takes it."""
        self.current = None
        return None

    def ack(self, message: Message) -> None:
        """Nothing more: the outcome's script was the acknowledgement."""
        self.current = None

    def flush(self) -> None:
        """Nothing is held back."""

    def crashed(self) -> None:
        """Hand what this consumer held back to Redis at once (it may run again)."""
        message, self.current = self.current, None
        if message is not None:
            self.tally.running = 0
            try:
                self._broker._hand_back(message, started=True)
            except BrokerError:
                pass  # its lease runs out instead
        self._leave()


class _Outage:
    """Logs a Redis outage once when it begins and once when it ends."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._down = False
        self._lock = threading.Lock()

    def began(self, exc: BaseException) -> None:
        with self._lock:
            if self._down:
                return
            self._down = True
        log.warning("lost Redis at %s (%s); reconnecting with backoff", self._url,
                    type(exc).__name__)

    def over(self) -> None:
        if not self._down:
            return
        with self._lock:
            if not self._down:
                return
            self._down = False
        log.warning("Redis at %s is back", self._url)


class _Unregistered:
    """Stands in, in a dead letter, for a task function this process does not register."""

    def __init__(self, name: str) -> None:
        self.__qualname__ = self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TaskQueueError(f"no task function named {self.name!r} is registered")


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
    return DeadLetter(task=Task(message.fn or _Unregistered(message.name), message.args,
                                message.kwargs, name=message.name),
                      task_id=message.id, exception=exc, traceback=None,
                      attempts=message.attempts, submitted_at=time.time(), failed_at=time.time())


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _safe_text(exc: BaseException, broker: RedisBroker) -> str:
    # redis-py's messages can hold the URL; never its password.
    text = str(exc)
    kwargs = getattr(broker._client.connection_pool, "connection_kwargs", None) or {}
    password = kwargs.get("password")
    return text.replace(password, "***") if password else text
