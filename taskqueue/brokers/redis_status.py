"""What a RedisBroker tells of its tasks: status by id, cancel by id, the overview.

:class:`StatusSide` is one part of :class:`~taskqueue.brokers.redis.RedisBroker`
(a mixin, never used alone, as the producer and consumer sides are). It only
reads what the scripts keep, in one round trip each: a live task is where
its id is (``leases``: running; ``delayed``: scheduled; else pending), with
its name and submission time from its message and its attempts from
``deliveries``; an ended one is its ``result:<id>``, the outcome its worker
wrote (name, times, attempts, error), which expires after ``result_ttl``
seconds. So every process sees the same status, and a status outlives the
process that ran the task.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from ..status import Overview, ProcessInfo, TaskInfo
from ..task import TaskState
from .redis_codec import _text

__all__ = ["StatusSide"]

_LIVE = {"running": TaskState.RUNNING, "scheduled": TaskState.SCHEDULED,
         "pending": TaskState.PENDING}


class StatusSide:
    """Status by id, cancel by id and the overview: a part of :class:`.RedisBroker`."""

    def task_status(self, task_id: str) -> Optional[TaskInfo]:
        """The status of ``task_id`` in Redis: live, or ended within ``result_ttl``."""
        def read() -> List[Any]:
            # One transaction (MULTI/EXEC: every key shares the hash tag, so
            # one slot): a finish between reading the outcome and the body
            # would otherwise make an ended task look unknown.
            with self._client.pipeline(transaction=True) as pipe:  # type: ignore[attr-defined]
                pipe.get(self._result_key(task_id))  # type: ignore[attr-defined]
                pipe.hget(self._key("messages"), task_id)  # type: ignore[attr-defined]
                pipe.zscore(self._key("leases"), task_id)  # type: ignore[attr-defined]
                pipe.zscore(self._key("delayed"), task_id)  # type: ignore[attr-defined]
                pipe.hget(self._key("deliveries"), task_id)  # type: ignore[attr-defined]
                pipe.hget(self._key("started"), task_id)  # type: ignore[attr-defined]
                return list(pipe.execute())
        outcome, body, lease, due, deliveries, started = self._guarded(read)  # type: ignore[attr-defined]
        if outcome is not None:
            return _ended(task_id, json.loads(outcome))
        if body is None:
            return None
        where = "running" if lease is not None else "scheduled" if due is not None else "pending"
        return _live(task_id, json.loads(body), where, int(deliveries or 0),
                     None if started is None else int(started) / 1000,
                     None if due is None else float(due) / 1000)

    def cancel_task(self, task_id: str) -> bool:
        """Cancel ``task_id`` wherever it was submitted, unless it has started.

        Its producer hears of it as of any outcome, and resolves its handle.
        """
        handle = self._handle_of(task_id)  # type: ignore[attr-defined]
        if handle is not None:  # this process follows it: as its handle's cancel()
            return bool(handle.cancel())
        info = self.task_status(task_id)
        if info is None or info.state is TaskState.RUNNING:
            return False
        if info.state.terminal:
            return info.state is TaskState.CANCELLED
        return self._cancel_by_id(task_id, info)  # type: ignore[attr-defined,no-any-return]

    def overview(self, limit: int) -> Overview:
        """What waits and runs in Redis now, and the processes that consume (one round trip)."""
        found = self.inspect()  # type: ignore[attr-defined]

        def read() -> List[Any]:
            with self._client.pipeline(transaction=False) as pipe:  # type: ignore[attr-defined]
                pipe.zrange(self._key("delayed"), 0, max(0, limit - 1),  # type: ignore[attr-defined]
                            withscores=True)
                pipe.hgetall(self._key("started"))  # type: ignore[attr-defined]
                return list(pipe.execute())
        delayed, started = self._guarded(read) if limit else ([], {})  # type: ignore[attr-defined]
        scheduled = [info for info in (self._scheduled_info(_text(i), score)
                                       for i, score in delayed) if info is not None]
        begun = {_text(k): int(v) / 1000 for k, v in started.items()}
        shown = found["running"][:limit]
        bodies = self._guarded(lambda: self._client.hmget(  # type: ignore[attr-defined]
            self._key("messages"), [r["id"] for r in shown])) if shown else []  # type: ignore[attr-defined]
        running = [_live(r["id"], json.loads(body), "running", r["delivery"], begun.get(r["id"]),
                         None)
                   for r, body in zip(shown, bodies) if body is not None]
        processes = [ProcessInfo(name=f"{w.get('host', '?')}:{w.get('pid', '?')}",
                                 workers=int(w.get("workers", 0)), running=int(w.get("running", 0)),
                                 seen_at=float(w.get("seen", 0.0)))
                     for w in found["workers"]]
        return Overview(pending_by_priority=dict(found["pending"]), scheduled=scheduled,
                        running=running, processes=processes)

    def _scheduled_info(self, task_id: str, due_ms: float) -> Optional[TaskInfo]:
        body = self._guarded(lambda: self._client.hget(self._key("messages"), task_id))  # type: ignore[attr-defined]
        if body is None:
            return None  # ended meanwhile
        deliveries = self._guarded(  # type: ignore[attr-defined]
            lambda: self._client.hget(self._key("deliveries"), task_id))  # type: ignore[attr-defined]
        return _live(task_id, json.loads(body), "scheduled", int(deliveries or 0), None,
                     due_ms / 1000)


def _live(task_id: str, body: Dict[str, Any], where: str, attempts: int,
          started: Optional[float], due: Optional[float]) -> TaskInfo:
    options = body.get("options") or {}
    return TaskInfo(id=task_id, name=str(options.get("name") or body.get("name") or "?"),
                    state=_LIVE[where], attempts=attempts,
                    submitted_at=body.get("submitted_at"),
                    started_at=started if where == "running" else None,
                    due=due if where == "scheduled" else None,
                    priority=int(options.get("priority") or 0))


def _ended(task_id: str, outcome: Dict[str, Any]) -> TaskInfo:
    error = outcome.get("error")
    text = None
    if isinstance(error, dict):
        text = f"{error.get('type', 'Exception')}: {error.get('message', '')}"
    return TaskInfo(id=task_id, name=str(outcome.get("name") or "?"),
                    state=TaskState(outcome.get("state", "failed")),
                    attempts=int(outcome.get("attempts") or 0),
                    submitted_at=outcome.get("submitted_at"),
                    started_at=outcome.get("started_at"),
                    finished_at=outcome.get("finished_at"), error=text,
                    priority=int(outcome.get("priority") or 0))
