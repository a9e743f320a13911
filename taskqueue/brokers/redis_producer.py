"""The producing side of a RedisBroker: tasks written in, and the thread that hears of their ends.

:class:`ProducerSide` is one part of :class:`~taskqueue.brokers.redis.RedisBroker`,
which inherits it (a mixin, never used alone): its methods work on the state
the broker's ``__init__`` sets up (the lock, the handles this process
follows, the client, the channels). Every process that submits runs it:
:meth:`~ProducerSide.enqueue` writes a task in one script and returns its
handle, or follows the live task that holds its unique key. The result
listener, one of the broker's threads, hears this process's outcomes on a
channel of its own and moves each handle with its task; after every
(re)subscribe it reads the result keys of every handle still held, so an
outcome published while nobody listened is not lost, and a task Redis no
longer holds at all fails its handle rather than leave it waiting.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from ..errors import BrokerError, QueueFull
from ..message import Message
from ..registry import TaskFunction
from ..task import TaskHandle
from .redis_codec import _body_and_meta, _failure, _options, _round_trip, _text
from .redis_connection import _BACKOFF_FIRST, _BACKOFF_MOST, log

__all__ = ["ProducerSide"]


class ProducerSide:
    """Submitting to Redis, and hearing of the outcomes: a part of :class:`.RedisBroker`.

    It has no state of its own (no ``__init__``): a mixin, not an object of
    its own, so that the handles followed here stay under the broker's one
    lock, which submits, the listener, cancels and shutdown all take.
    """

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
        with self._written(task_id, handle):
            code, holder = self._enqueue_waiting(args, block, timeout)
        if code == 1:
            with self._lock:
                self._submitted += 1
            return handle
        with self._lock:
            self._forget_locked(task_id)
        return self._follow(holder)

    @contextlib.contextmanager
    def _written(self, task_id: str, handle: TaskHandle) -> Iterator[None]:
        # Around the script that writes a task: its handle is followed from
        # before it runs (a catch-up meanwhile sees it), counted unconfirmed
        # until it answers (not yet lost if Redis lacks it), and forgotten
        # if the call fails.
        with self._lock:
            self._pending[task_id] = handle
            self._unconfirmed.add(task_id)
        try:
            yield
        except BaseException:
            with self._lock:
                self._forget_locked(task_id)
            raise
        finally:
            with self._lock:
                self._unconfirmed.discard(task_id)

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
                    if time.monotonic() - polled > self._poll_every():
                        # Shut down, it looks at all it still follows: the
                        # last of them may be lost (a flush), and nothing
                        # else would end it.
                        self._catch_up(everything=self._closed.is_set())
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

    def _poll_every(self) -> float:
        # Seconds between catch-ups while subscribed: handles of another
        # process's tasks are polled often; once shut down, what is left
        # now and then; otherwise never (the channel says it all).
        if self._foreign:
            return 0.25
        return 1.0 if self._closed.is_set() else float("inf")

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
                pipe.hmget(self._key("meta"), chunk)  # held exactly while the task lives
                outcomes, metas = pipe.execute()
            for task_id, raw, meta in zip(chunk, outcomes, metas):
                if raw is not None:
                    self._apply(json.loads(raw))
                elif meta is None and task_id not in unsure:
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
