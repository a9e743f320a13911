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

The broker is in parts, one module each, whose imports point one way (this
module on top, the codec and the connection at the bottom): this module holds
:class:`RedisBroker` itself (construction, lifecycle, cancelling, sealing,
dead letters and what is counted);
:mod:`~taskqueue.brokers.redis_producer` its producing side (submit, and the
thread that hears of outcomes); :mod:`~taskqueue.brokers.redis_consumer` its
consuming side (:class:`RedisConsumer`, leases, the maintenance thread);
:mod:`~taskqueue.brokers.redis_codec` the JSON that crosses processes; and
:mod:`~taskqueue.brokers.redis_connection` what they share about the server.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

from ..deadletter import DeadLetter, MissingTaskFunction
from ..errors import BrokerError, QueueClosed
from ..message import Message
from ..retry import Backoff, RetryPolicy
from ..task import Task, TaskHandle
from ..validate import optional_positive_seconds, whole_number
from .base import Binding, Broker, BrokerCounts, Callbacks
from . import redis_scripts as scripts
# CRASHES_FORGIVEN, safe_url and RedisConsumer are also this module's own
# names: importable from here, where they were before the broker was split.
from .redis_codec import CRASHES_FORGIVEN, _body_and_meta, _failure, _text, outcome_fields
from .redis_connection import _BLOCK, _import_redis, _Outage, _safe_text, safe_url
from .redis_consumer import _NO_TAKE, ConsumerSide, RedisConsumer
from .redis_producer import ProducerSide
from .redis_status import StatusSide

__all__ = ["RedisBroker", "RedisConsumer", "CRASHES_FORGIVEN", "safe_url"]


class RedisBroker(ProducerSide, ConsumerSide, StatusSide, Broker):
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
        if self._first_listen.is_set():  # every submit comes here: no lock once open
            return
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
        # Heard of at once (a dashboard lists it), not at the thread's first
        # beat; outside the lock, which the beat takes.
        try:
            self._heartbeat()
        except self._redis.RedisError:
            pass  # the maintenance thread beats again, and reports the outage

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

    # -- cancelling, sealing, stopping ----------------------------------------------------------

    def withdraw(self, handle: TaskHandle) -> Optional[Tuple[Message, Callbacks]]:
        """Cancel a task still waiting in Redis (queued or scheduled)."""
        message = handle._message
        outcome = {"id": handle.id, "state": "cancelled", "attempts": handle.attempts,
                   "finished_at": time.time(), **outcome_fields(
                       handle.name, 0 if message is None else message.priority,
                       None if message is None else self._wall(message.submitted_at), None)}
        result = self._call("FINISH", [self._events, handle.id, "", json.dumps(outcome),
                                       self.result_ttl, "cancelled", "", self._dead_letter_limit(),
                                       *_NO_TAKE])
        if int(result[0]) != 1:
            return None
        with self._lock:
            self._forget_locked(handle.id)
        callbacks = handle._mark_cancelled()
        message = handle._message or Message(None, (), None, handle.name, RetryPolicy(
            0, Backoff.none(), (Exception,)), handle)
        return message, callbacks or []

    def _handle_of(self, task_id: str) -> Optional[TaskHandle]:
        with self._lock:
            return self._pending.get(task_id)

    def _cancel_by_id(self, task_id: str, info: Any) -> bool:
        # A task this process does not follow: cancelled in Redis, in the
        # script a handle's cancel() runs; its producer hears of it.
        outcome = {"id": task_id, "state": "cancelled", "attempts": info.attempts,
                   "finished_at": time.time(),
                   **outcome_fields(info.name, info.priority, info.submitted_at, None)}
        result = self._call("FINISH", [self._events, task_id, "", json.dumps(outcome),
                                       self.result_ttl, "cancelled", "", self._dead_letter_limit(),
                                       *_NO_TAKE])
        return int(result[0]) == 1

    def _wall(self, reading: float) -> float:
        # A reading of the queue's clock as wall-clock time.
        return time.time() - max(0.0, self._clock() - reading)

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
        task = Task(fn or MissingTaskFunction(raw["name"]), raw.get("args") or (),
                    raw.get("kwargs") or None, name=options.get("name") or raw["name"],
                    priority=int(options.get("priority", 0)))
        return DeadLetter(task=task, task_id=raw["id"], exception=_failure(error),
                          traceback=error.get("traceback") or "", attempts=int(raw["attempts"]),
                          submitted_at=float(raw.get("submitted_at") or 0.0),
                          failed_at=float(raw.get("failed_at") or 0.0))

    def requeue(self, letter: DeadLetter, message: Message, *, block: bool = True,
                timeout: Optional[float] = None) -> TaskHandle:
        """Forget ``letter`` and take its task in anew, in one script (once, across processes).

        A process that does not register the letter's task function (a
        dashboard's, the command line's) requeues it by name, with the
        options it failed with, as :meth:`requeue_dead` does.
        """
        if isinstance(message.fn, MissingTaskFunction):  # requeued by name, from what Redis holds
            body, meta = self._encode_letter(letter)
        else:
            body, meta = self._encode(message)
        task_id = uuid.uuid4().hex
        message.id = message.handle._id = task_id
        self.open()
        with self._written(task_id, message.handle):
            code, holder = self._call("REQUEUE_DEAD", [
                self._events, letter.task_id, task_id, body, meta, message.priority, "",
                message.key or "", self._maxsize(), "0"])
        code = int(code)
        if code == 1:
            return message.handle
        with self._lock:
            self._forget_locked(task_id)
        if code == -1:
            raise ValueError(f"dead letter {letter.task_id} is not held: it was requeued or "
                             "purged already (here or by another process)")
        return self._follow(_text(holder))

    def _encode_letter(self, letter: DeadLetter) -> Tuple[str, str]:
        raw = self._guarded(lambda: self._client.hget(self._key("dead"), letter.task_id))
        if raw is None:
            raise ValueError(f"dead letter {letter.task_id} is not held: it was requeued or "
                             "purged already, or dropped past dead_letter_limit")
        stored = json.loads(raw)
        return _body_and_meta(stored["name"], stored.get("args") or [],
                              stored.get("kwargs") or {}, stored.get("options") or {},
                              self._producer)

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
                pipe.zcard(self._key("delayed"))
                return list(pipe.execute())
        stats, running, dead, delayed = self._guarded(read)
        counters = {_text(k): int(v) for k, v in stats.items()}
        return BrokerCounts(
            submitted=counters.get("submitted", 0), cancelled=counters.get("cancelled", 0),
            dead_letters=int(dead), dead_letters_dropped=counters.get("dead_letters_dropped", 0),
            succeeded=counters.get("succeeded", 0), failed=counters.get("failed", 0),
            retried=counters.get("retried", 0), running=int(running), scheduled=int(delayed))

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
                              f"{_safe_text(exc, self._client)}") from None

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
