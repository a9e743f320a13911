"""The consuming side of a RedisBroker: its worker threads' consumers, and the leases they hold.

:class:`RedisConsumer` is one worker thread's side: it waits on an inbox of
its own, starts what it is handed and reports each outcome.
:class:`ConsumerSide` is the part of :class:`~taskqueue.brokers.redis.RedisBroker`
that its consumers call, which the broker inherits (a mixin, never used
alone; its methods work on the state the broker's ``__init__`` sets up, the
leases held here among it): it leases tasks to this process and reads them
as messages (burying one it cannot run), reports outcomes under the lease
(fenced if another delivery took over), hands tasks back, and runs the
maintenance thread of a consuming process, which renews its leases,
reclaims lost ones, promotes due tasks and tells Redis this worker lives.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..deadletter import DeadLetter
from ..errors import BrokerError, TaskQueueError
from ..message import Message
from ..retry import Backoff, RetryPolicy
from ..stats import WorkerTally
from ..task import TaskHandle
from .base import Consumer
from .redis_codec import CRASHES_FORGIVEN, _error, _letter, _local_letter, _text, outcome_fields
from .redis_connection import _BACKOFF_FIRST, _BACKOFF_MOST, _BLOCK, log

if TYPE_CHECKING:  # only for hints: the broker imports this module
    from .redis import RedisBroker

__all__ = ["RedisConsumer", "ConsumerSide"]

_NO_TAKE = ("", "", "", "", 0)  # take()'s arguments when no next task is wanted
_HEARTBEAT = 2.0  # seconds between a consuming process's heartbeats; 5 missed, it is gone


class ConsumerSide:
    """Leasing tasks to this process and reporting on them: a part of :class:`.RedisBroker`.

    It has no state of its own (no ``__init__``): a mixin, not an object of
    its own, so that the leases held here stay under the broker's one lock,
    which the consumers, the maintenance thread and ``wait_idle`` (reading
    them with the handles followed here) all take.
    """

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
        started = message.started_at
        outcome = {"id": message.id, "state": state, "attempts": message.attempts,
                   "finished_at": time.time(), **outcome, **outcome_fields(
                       message.name, message.priority, self._wall(message.submitted_at),
                       None if started is None else self._wall(started))}
        reply = self._call("FINISH", [self._events, message.id, token, json.dumps(outcome),
                                      self.result_ttl, state,
                                      "" if letter is None else json.dumps(letter),
                                      self._dead_letter_limit(),
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
                                      "running": running, "seen": now,
                                      "workers": self._binding.workers() if self._binding
                                      else 0}))

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
