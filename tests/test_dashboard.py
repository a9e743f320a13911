"""Tests of the dashboard's HTTP API, against a real server on a free port.

Each test talks to the server over a socket (urllib, or http.client for
raw paths and headers), as the page does; a queue of the test's own stands
behind it.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from taskqueue import Stats, Task, TaskQueue, TaskState
from taskqueue.dashboard import Dashboard, JournalSource, QueueSource, serve, sources

from conftest import WAIT, Gate

pytestmark = pytest.mark.timeout(60)

TOKEN = "s3cret-token"
ACTIONS = ["/api/dead/{id}/requeue", "/api/dead/purge", "/api/tasks/{id}/cancel"]
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
}


class Answer:
    """One response: status, headers, and the body (decoded JSON when it is JSON)."""

    def __init__(self, status: int, headers: Any, raw: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw
        self.type = headers.get("Content-Type", "")

    @property
    def json(self) -> Any:
        assert self.type == "application/json", self.type
        return json.loads(self.raw)


def request(dashboard: Dashboard, path: str, *, method: str = "GET",
            headers: Optional[Dict[str, str]] = None, body: Optional[bytes] = None) -> Answer:
    """Send one request to ``dashboard`` (``path`` sent exactly as given)."""
    conn = http.client.HTTPConnection("127.0.0.1", dashboard.port, timeout=WAIT)
    try:
        conn.putrequest(method, path, skip_host="Host" in (headers or {}))
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        conn.close()


def get(dashboard: Dashboard, path: str) -> Answer:
    return request(dashboard, path)


def post(dashboard: Dashboard, path: str, token: Optional[str] = TOKEN,
         headers: Optional[Dict[str, str]] = None) -> Answer:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return request(dashboard, path, method="POST", headers=sent, body=b"")


@pytest.fixture
def dashboards() -> Iterator[Callable[..., Dashboard]]:
    """Yield ``serve``; every dashboard served is closed afterwards."""
    made: List[Dashboard] = []

    def make(source: Any, **kwargs: Any) -> Dashboard:
        dashboard = serve(source, **kwargs)
        made.append(dashboard)
        return dashboard

    yield make
    for dashboard in made:
        dashboard.close()


@pytest.fixture
def queue(make_queue: Callable[..., TaskQueue]) -> TaskQueue:
    return make_queue(workers=1, name="dash-test")


def fail(message: str) -> None:
    raise ValueError(message)


def succeed(value: int) -> int:
    return value


def later() -> str:
    return "later"


def dead_letter_of(queue: TaskQueue, message: str) -> str:
    """Submit a task that fails for good; return its id once it is a dead letter."""
    handle = queue.submit(fail, message)
    queue.join(WAIT)
    assert handle.state is TaskState.FAILED
    return handle.id


# -- reading --------------------------------------------------------------------------

def test_config_says_actions_only_with_a_token(queue: TaskQueue, dashboards: Any) -> None:
    assert get(dashboards(QueueSource(queue)), "/api/config").json == {
        "name": "dash-test", "actions": False, "refresh_seconds": 1}
    assert get(dashboards(QueueSource(queue), token=TOKEN), "/api/config").json == {
        "name": "dash-test", "actions": True, "refresh_seconds": 1}


def test_stats_are_every_field_of_stats_by_name(queue: TaskQueue, dashboards: Any) -> None:
    dashboard = dashboards(QueueSource(queue))
    for value in range(3):
        queue.submit(succeed, value)
    dead_letter_of(queue, "boom")

    answer = get(dashboard, "/api/stats")

    assert answer.status == 200 and answer.type == "application/json"
    body = answer.json
    assert list(body) == [field.name for field in dataclasses.fields(Stats)]
    expected = dataclasses.asdict(queue.stats())
    counts = [f.name for f in dataclasses.fields(Stats) if f.type in ("int", int)]
    assert {name: body[name] for name in counts} == {name: expected[name] for name in counts}
    assert body["submitted"] == 4 and body["succeeded"] == 3 and body["failed"] == 1
    assert body["dead_letters"] == 1 and body["workers"] == 1
    assert all(isinstance(body[f.name], float) for f in dataclasses.fields(Stats)
               if f.name not in counts)


def test_a_task_is_looked_up_by_id_as_it_runs_waits_and_ends(queue: TaskQueue,
                                                             dashboards: Any) -> None:
    dashboard = dashboards(QueueSource(queue))
    started, release = threading.Event(), threading.Event()

    def hold() -> str:
        started.set()
        release.wait(WAIT)
        return "done"

    # Given one task holding the only worker and one waiting behind it
    running = queue.submit(hold)
    assert started.wait(WAIT)
    waiting = queue.submit(succeed, 1)

    # Then each is reported as it is now
    body = get(dashboard, f"/api/tasks/{running.id}").json
    assert body["id"] == running.id and body["state"] == "running"
    assert body["attempts"] == 1 and body["started_at"] is not None
    assert body["finished_at"] is None and body["error"] is None
    body = get(dashboard, f"/api/tasks/{waiting.id}").json
    assert body["id"] == waiting.id and body["state"] == "pending"
    assert body["attempts"] == 0 and body["started_at"] is None and body["finished_at"] is None

    # And once they end, as they ended: the queue's own TaskInfo, field for field
    release.set()
    queue.join(WAIT)
    for handle in (running, waiting):
        body = get(dashboard, f"/api/tasks/{handle.id}").json
        assert body == queue.get_task_status(handle.id).to_dict()
        assert body["state"] == "succeeded"
        assert body["finished_at"] >= body["started_at"] >= body["submitted_at"]


def test_a_failed_task_is_reported_with_its_error(queue: TaskQueue, dashboards: Any) -> None:
    dashboard = dashboards(QueueSource(queue))
    task_id = dead_letter_of(queue, "bad input")

    body = get(dashboard, f"/api/tasks/{task_id}").json

    assert body == queue.get_task_status(task_id).to_dict()
    assert body["state"] == "failed" and body["error"] == "ValueError: bad input"
    assert body["attempts"] == 1 and body["name"] == queue.dead_letters()[0].name


def test_an_unknown_task_is_404(queue: TaskQueue, dashboards: Any) -> None:
    answer = get(dashboards(QueueSource(queue)), "/api/tasks/no-such-task")
    assert answer.status == 404
    assert "no-such-task" in answer.json["error"]


def test_dead_letters_are_listed_oldest_first_with_their_tracebacks(queue: TaskQueue,
                                                                   dashboards: Any) -> None:
    dashboard = dashboards(QueueSource(queue))
    first, second = dead_letter_of(queue, "boom 1"), dead_letter_of(queue, "boom 2")

    body = get(dashboard, "/api/dead").json

    assert body["count"] == 2
    assert [d["task_id"] for d in body["dead_letters"]] == [first, second]
    letter, held = body["dead_letters"][0], queue.dead_letters()[0]
    assert set(letter) == {"task_id", "name", "attempts", "error", "traceback",
                           "submitted_at", "failed_at"}
    assert letter["error"] == "ValueError: boom 1"
    assert letter["traceback"].startswith("Traceback (most recent call last)")
    assert "ValueError: boom 1" in letter["traceback"] and "in fail" in letter["traceback"]
    assert letter == {"task_id": held.task_id, "name": held.name, "attempts": held.attempts,
                      "error": "ValueError: boom 1", "traceback": held.traceback,
                      "submitted_at": held.submitted_at, "failed_at": held.failed_at}


def test_a_dead_letter_limit_sends_the_newest_and_counts_them_all(queue: TaskQueue,
                                                                 dashboards: Any) -> None:
    dashboard = dashboards(QueueSource(queue))
    ids = [dead_letter_of(queue, f"boom {n}") for n in range(3)]

    newest = get(dashboard, "/api/dead?limit=2").json
    none = get(dashboard, "/api/dead?limit=0").json
    more = get(dashboard, "/api/dead?limit=5").json

    assert [d["task_id"] for d in newest["dead_letters"]] == ids[1:] and newest["count"] == 3
    assert none == {"dead_letters": [], "count": 3}
    assert [d["task_id"] for d in more["dead_letters"]] == ids
    for bad in ("-1", "lots", "1001"):
        answer = get(dashboard, "/api/dead?limit=" + bad)
        assert answer.status == 400 and "limit" in answer.json["error"]


def test_overview_is_the_queues_overview(queue: TaskQueue, dashboards: Any) -> None:
    dashboard = dashboards(QueueSource(queue))
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait(WAIT)

    running = queue.submit(hold)
    assert started.wait(WAIT)
    scheduled = queue.submit(Task(later, delay=3600))
    queue.submit(Task(succeed, (1,), priority=5))

    body = get(dashboard, "/api/overview").json
    expected = queue.overview().to_dict()

    assert body["pending_by_priority"] == expected["pending_by_priority"] == {"5": 1}
    assert [t["id"] for t in body["scheduled"]] == [scheduled.id]
    assert body["scheduled"] == expected["scheduled"]
    assert [t["id"] for t in body["running"]] == [running.id]
    assert [p["workers"] for p in body["processes"]] == [1]
    assert get(dashboard, "/api/overview?limit=0").json["scheduled"] == []
    assert get(dashboard, "/api/overview?limit=lots").status == 400
    release.set()


def test_series_samples_the_counters_once_a_second(queue: TaskQueue, dashboards: Any) -> None:
    dashboard = dashboards(QueueSource(queue))
    queue.submit(succeed, 1)
    queue.join(WAIT)

    # A bounded poll: the sampler adds a point a second.
    deadline = time.monotonic() + WAIT
    points: List[Dict[str, Any]] = []
    while time.monotonic() < deadline and len(points) < 2:
        body = get(dashboard, "/api/series").json
        points = body["points"]
    assert len(points) >= 2
    assert body["interval"] == 1.0
    assert all(set(p) == {"t", "submitted", "succeeded", "failed", "cancelled", "retried"}
               for p in points)
    assert points[-1]["t"] > points[-2]["t"]
    assert points[-1]["submitted"] == points[-1]["succeeded"] == 1


# -- acting ---------------------------------------------------------------------------

def test_requeue_with_the_token_runs_the_task_again(make_queue: Callable[..., TaskQueue],
                                                    dashboards: Any) -> None:
    queue = make_queue(workers=1)
    calls: List[int] = []

    def fails_once() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("first time")
        return "second time"

    handle = queue.submit(fails_once)
    queue.join(WAIT)
    dashboard = dashboards(QueueSource(queue), token=TOKEN)

    answer = post(dashboard, f"/api/dead/{handle.id}/requeue")

    assert answer.status == 200
    body = answer.json
    assert body["requeued"] == handle.id and body["task_id"] != handle.id
    queue.join(WAIT)
    assert queue.get_task_status(body["task_id"]).state is TaskState.SUCCEEDED
    assert get(dashboard, f"/api/tasks/{body['task_id']}").json["state"] == "succeeded"
    assert queue.dead_letters() == [] and len(calls) == 2
    # The letter is gone: a second requeue finds nothing.
    assert post(dashboard, f"/api/dead/{handle.id}/requeue").status == 404


def test_requeue_on_a_queue_that_stays_full_is_503_and_keeps_the_letter(
        make_queue: Callable[..., TaskQueue], dashboards: Any, gate: Gate,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "REQUEUE_TIMEOUT", 0.05)
    queue = make_queue(workers=1, maxsize=1, submit_timeout=None)  # submits wait for ever
    letter_id = dead_letter_of(queue, "boom")
    queue.submit(gate.wait)
    gate.wait_for_arrivals(1)
    queue.submit(abs, -1)  # the one slot is taken
    dashboard = dashboards(QueueSource(queue), token=TOKEN)

    answer = post(dashboard, f"/api/dead/{letter_id}/requeue")

    assert answer.status == 503 and "full" in answer.json["error"].lower()
    assert [d.task_id for d in queue.dead_letters()] == [letter_id]
    gate.open()


def test_requeue_of_an_unknown_letter_is_404(queue: TaskQueue, dashboards: Any) -> None:
    dead_letter_of(queue, "boom")
    answer = post(dashboards(QueueSource(queue), token=TOKEN), "/api/dead/nope/requeue")
    assert answer.status == 404 and "nope" in answer.json["error"]
    assert len(queue.dead_letters()) == 1


def test_purge_forgets_every_dead_letter(queue: TaskQueue, dashboards: Any) -> None:
    dead_letter_of(queue, "one")
    dead_letter_of(queue, "two")
    answer = post(dashboards(QueueSource(queue), token=TOKEN), "/api/dead/purge")
    assert (answer.status, answer.json) == (200, {"purged": 2})
    assert queue.dead_letters() == []


def test_cancel_stops_a_scheduled_task(queue: TaskQueue, dashboards: Any) -> None:
    handle = queue.submit(Task(later, delay=3600))
    assert handle.state is TaskState.SCHEDULED

    answer = post(dashboards(QueueSource(queue), token=TOKEN), f"/api/tasks/{handle.id}/cancel")

    assert (answer.status, answer.json) == (200, {"cancelled": True})
    assert handle.cancelled()
    assert queue.get_task_status(handle.id).state is TaskState.CANCELLED


def test_cancel_of_a_finished_task_is_409_and_of_an_unknown_one_404(queue: TaskQueue,
                                                                    dashboards: Any) -> None:
    handle = queue.submit(succeed, 1)
    queue.join(WAIT)
    dashboard = dashboards(QueueSource(queue), token=TOKEN)

    answer = post(dashboard, f"/api/tasks/{handle.id}/cancel")
    assert answer.status == 409
    assert answer.json["cancelled"] is False and answer.json["state"] == "succeeded"
    assert handle.result(WAIT) == 1
    assert post(dashboard, "/api/tasks/nope/cancel").status == 404


# -- what must not act ------------------------------------------------------------------

@pytest.fixture
def held(queue: TaskQueue) -> Tuple[TaskQueue, str, Any]:
    """The queue with one dead letter and one scheduled task: what an action would change."""
    letter = dead_letter_of(queue, "boom")
    scheduled = queue.submit(Task(later, delay=3600))
    return queue, letter, scheduled


def unchanged(queue: TaskQueue, letter: str, scheduled: Any) -> bool:
    return ([d.task_id for d in queue.dead_letters()] == [letter]
            and scheduled.state is TaskState.SCHEDULED and queue.stats().submitted == 2)


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE"])
def test_anything_but_a_post_to_an_action_is_405_and_changes_nothing(
        held: Any, dashboards: Any, method: str) -> None:
    queue, letter, scheduled = held
    dashboard = dashboards(QueueSource(queue), token=TOKEN)
    for path in ACTIONS:
        target = path.format(id=letter if "dead" in path else scheduled.id)
        answer = request(dashboard, target, method=method,
                         headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status == 405, target
        assert answer.headers["Allow"] == "POST"
    assert unchanged(queue, letter, scheduled)


@pytest.mark.parametrize("authorization", [
    None, "Bearer wrong", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}",
    TOKEN, "Bearer ", f"Token {TOKEN}",
])
def test_a_post_without_the_right_token_is_403_and_changes_nothing(
        held: Any, dashboards: Any, authorization: Optional[str]) -> None:
    queue, letter, scheduled = held
    dashboard = dashboards(QueueSource(queue), token=TOKEN)
    headers = {} if authorization is None else {"Authorization": authorization}
    for path in ACTIONS:
        target = path.format(id=letter if "dead" in path else scheduled.id)
        answer = request(dashboard, target, method="POST", headers=headers, body=b"")
        assert answer.status == 403, target
        assert "token" in answer.json["error"]
    assert unchanged(queue, letter, scheduled)


def test_every_post_to_a_dashboard_without_a_token_is_403(held: Any, dashboards: Any) -> None:
    queue, letter, scheduled = held
    dashboard = dashboards(QueueSource(queue))
    for token in (None, TOKEN, "anything"):
        for path in ACTIONS:
            target = path.format(id=letter if "dead" in path else scheduled.id)
            answer = post(dashboard, target, token=token)
            assert answer.status == 403, target
            assert "read-only" in answer.json["error"]
    assert unchanged(queue, letter, scheduled)


def test_a_body_too_large_is_refused_unread(held: Any, dashboards: Any) -> None:
    queue, letter, scheduled = held
    dashboard = dashboards(QueueSource(queue), token=TOKEN)
    conn = http.client.HTTPConnection("127.0.0.1", dashboard.port, timeout=WAIT)
    try:
        conn.putrequest("POST", "/api/dead/purge")
        conn.putheader("Authorization", f"Bearer {TOKEN}")
        conn.putheader("Content-Length", str(10 ** 9))
        conn.endheaders()  # and no body: the server must not wait for it
        assert conn.getresponse().status == 413
    finally:
        conn.close()
    assert unchanged(queue, letter, scheduled)


def test_a_small_body_is_read_and_ignored(held: Any, dashboards: Any) -> None:
    queue, letter, scheduled = held
    dashboard = dashboards(QueueSource(queue), token=TOKEN)
    answer = request(dashboard, "/api/dead/purge", method="POST", body=b'{"all": false}' * 100,
                     headers={"Authorization": f"Bearer {TOKEN}"})
    assert (answer.status, answer.json) == (200, {"purged": 1})


# -- safe by default ------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def dashboard_threads() -> List[str]:
    return [t.name for t in threading.enumerate() if "dashboard" in t.name]


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "example.com", "192.168.1.10"])
def test_a_non_loopback_host_without_a_token_is_refused_and_nothing_listens(
        queue: TaskQueue, host: str) -> None:
    port = free_port()
    before = dashboard_threads()
    with pytest.raises(ValueError, match="host.*token"):
        serve(QueueSource(queue), host=host, port=port)
    with pytest.raises(ValueError, match="host.*token"):
        queue.serve_dashboard(host=host, port=port)
    assert dashboard_threads() == before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()


def test_a_non_loopback_host_with_a_token_serves(queue: TaskQueue, dashboards: Any) -> None:
    dashboard = dashboards(QueueSource(queue), host="0.0.0.0", token=TOKEN)
    assert dashboard.url == f"http://0.0.0.0:{dashboard.port}/"
    # Reachable by any name: the token, not the Host, guards it.
    answer = request(dashboard, "/api/config", headers={"Host": f"box.lan:{dashboard.port}",
                                                        "Authorization": f"Bearer {TOKEN}"})
    assert answer.json["actions"] is True


def test_on_a_non_loopback_host_every_read_of_the_api_needs_the_token(
        queue: TaskQueue, dashboards: Any) -> None:
    letter_id = dead_letter_of(queue, "secret detail")
    dashboard = dashboards(QueueSource(queue), host="0.0.0.0", token=TOKEN)
    reads = ["/api/config", "/api/stats", "/api/series", "/api/overview", "/api/dead",
             f"/api/tasks/{letter_id}", "/api/tasks/no-such-task"]
    for path in reads:
        for authorization in (None, "Bearer wrong", f"Basic {TOKEN}", TOKEN):
            headers = {} if authorization is None else {"Authorization": authorization}
            for method in ("GET", "HEAD"):
                answer = request(dashboard, path, method=method, headers=headers)
                assert answer.status == 401, (path, authorization, method)
                assert answer.headers["WWW-Authenticate"].startswith("Bearer")
                assert b"secret detail" not in answer.raw and letter_id.encode() not in answer.raw
        answer = request(dashboard, path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status == (404 if path.endswith("no-such-task") else 200), path
    assert "secret detail" in request(dashboard, "/api/dead", headers={
        "Authorization": f"Bearer {TOKEN}"}).json["dead_letters"][0]["error"]
    # The page's own files hold no data: anyone may load them, to be asked for the token
    for path in ("/", "/static/app.js", "/static/style.css"):
        assert get(dashboard, path).status == 200, path


def test_on_loopback_reads_need_no_token_even_when_it_has_one(queue: TaskQueue,
                                                             dashboards: Any) -> None:
    dashboard = dashboards(QueueSource(queue), token=TOKEN)
    assert get(dashboard, "/api/stats").status == 200
    assert get(dashboard, "/api/config").json["actions"] is True


@pytest.mark.parametrize("kwargs, error", [
    ({"token": ""}, ValueError), ({"token": "two words"}, ValueError),
    ({"token": 1234}, TypeError), ({"port": -1}, ValueError), ({"port": 65536}, ValueError),
    ({"port": "8000"}, TypeError), ({"port": True}, TypeError), ({"host": None}, TypeError),
])
def test_bad_parameters_are_refused(queue: TaskQueue, kwargs: Dict[str, Any],
                                    error: type) -> None:
    name = next(iter(kwargs))
    with pytest.raises(error, match=name):
        serve(QueueSource(queue), **kwargs)


def test_every_response_carries_the_security_headers(queue: TaskQueue, dashboards: Any) -> None:
    dashboard = dashboards(QueueSource(queue), token=TOKEN)
    answers = [get(dashboard, "/"), get(dashboard, "/api/stats"), get(dashboard, "/nowhere"),
               get(dashboard, "/api/dead/purge"), post(dashboard, "/api/dead/purge", token="x"),
               request(dashboard, "/api/stats", headers={"Host": "evil.example"}),
               request(dashboard, "/api/stats", method="BREW")]
    assert [a.status for a in answers] == [200, 200, 404, 405, 403, 421, 501]
    for answer in answers:
        for name, value in SECURITY_HEADERS.items():
            assert answer.headers[name] == value, (answer.status, name)


@pytest.mark.parametrize("host, status", [
    ("127.0.0.1:{port}", 200), ("localhost:{port}", 200), ("LOCALHOST:{port}", 200),
    ("[::1]:{port}", 200), ("evil.example:{port}", 421), ("evil.example", 421),
    ("127.0.0.1:{other}", 421), ("127.0.0.1", 421), ("", 421),
])
def test_a_loopback_dashboard_refuses_a_foreign_host_header(
        queue: TaskQueue, dashboards: Any, host: str, status: int) -> None:
    dashboard = dashboards(QueueSource(queue))
    value = host.format(port=dashboard.port, other=dashboard.port + 1)
    answer = request(dashboard, "/api/stats", headers={"Host": value})
    assert answer.status == status
    if status == 421:
        assert "Host" in answer.json["error"]


def test_unknown_paths_are_404_and_reads_take_only_get(queue: TaskQueue,
                                                      dashboards: Any) -> None:
    dashboard = dashboards(QueueSource(queue), token=TOKEN)
    for path in ["/nowhere", "/api", "/api/stats/", "/api/tasks/", "/api/tasks/a/b",
                 "/api/dead/purge/more"]:
        answer = get(dashboard, path)
        assert answer.status == 404, path
        assert "error" in answer.json
    answer = post(dashboard, "/api/stats")
    assert answer.status == 405 and answer.headers["Allow"] == "GET, HEAD"
    head = request(dashboard, "/api/stats", method="HEAD")
    assert head.status == 200 and head.raw == b""
    assert int(head.headers["Content-Length"]) == len(get(dashboard, "/api/stats").raw)


# -- the page's files -----------------------------------------------------------------

def test_the_page_is_served_as_html_naming_its_script(queue: TaskQueue, dashboards: Any) -> None:
    answer = get(dashboards(QueueSource(queue)), "/")
    assert answer.status == 200
    assert answer.type == "text/html; charset=utf-8"
    assert b"app.js" in answer.raw


@pytest.mark.parametrize("name, content_type", [
    ("app.js", "text/javascript; charset=utf-8"), ("style.css", "text/css; charset=utf-8"),
    ("index.html", "text/html; charset=utf-8"),
])
def test_static_files_are_served_with_their_content_types(
        queue: TaskQueue, dashboards: Any, name: str, content_type: str) -> None:
    static = Path(__file__).resolve().parent.parent / "taskqueue" / "dashboard" / "static"
    answer = get(dashboards(QueueSource(queue)), f"/static/{name}")
    assert answer.status == 200
    assert answer.type == content_type
    assert answer.raw == (static / name).read_bytes()


@pytest.mark.parametrize("path", [
    "/static/../server.py", "/static/..%2fserver.py", "/static/%2e%2e/server.py",
    "/static/../../taskqueue/__init__.py", "/static/", "/static/.", "/static/..",
    "/static//etc/passwd", "/static/sub/app.js", "/static/../__init__.py", "/../server.py",
    "/static/app.js/", "/static/nothing.js",
])
def test_no_path_leads_out_of_the_static_folder(queue: TaskQueue, dashboards: Any,
                                                path: str) -> None:
    answer = get(dashboards(QueueSource(queue)), path)
    assert answer.status == 404
    assert b"import" not in answer.raw


# -- lifecycle ------------------------------------------------------------------------

def test_close_frees_the_port_joins_its_threads_and_is_idempotent(queue: TaskQueue) -> None:
    dashboard = serve(QueueSource(queue))
    port = dashboard.port
    assert dashboard.url == f"http://127.0.0.1:{port}/"
    assert get(dashboard, "/api/config").status == 200
    assert {"dash-test-dashboard", "dash-test-dashboard-sampler"} <= set(dashboard_threads())

    dashboard.close()
    dashboard.close()

    assert dashboard.closed
    assert "dash-test-dashboard" not in dashboard_threads()
    assert "dash-test-dashboard-sampler" not in dashboard_threads()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
    with serve(QueueSource(queue), port=port) as again:  # the port is free to bind again
        assert again.port == port
        assert get(again, "/api/config").status == 200
    assert again.closed


def test_serve_dashboard_is_the_queues_own(queue: TaskQueue) -> None:
    with queue.serve_dashboard(token=TOKEN) as dashboard:
        assert isinstance(dashboard, Dashboard)
        assert get(dashboard, "/api/config").json == {
            "name": "dash-test", "actions": True, "refresh_seconds": 1}


def test_requests_are_logged_at_debug_never_to_stderr_nor_with_the_token(
        queue: TaskQueue, dashboards: Any, capfd: Any, caplog: Any) -> None:
    dashboard = dashboards(QueueSource(queue), token=TOKEN)
    with caplog.at_level(logging.DEBUG, logger="taskqueue.dashboard"):
        get(dashboard, "/api/stats")
        get(dashboard, "/nowhere")
        post(dashboard, "/api/dead/purge")
        request(dashboard, "/api/stats", method="BREW")
    assert capfd.readouterr().err == ""
    records = [r for r in caplog.records if r.name == "taskqueue.dashboard"]
    assert any("/api/stats" in r.getMessage() for r in records)
    assert all(r.levelno == logging.DEBUG for r in records)
    assert not any(TOKEN in r.getMessage() for r in records)


# -- a journal file, read while its program runs --------------------------------------------

@pytest.fixture
def journal_program(tmp_path: Path, make_queue: Callable[..., TaskQueue]) -> Any:
    """A program owning a journal file: one dead letter, one scheduled task."""
    path = str(tmp_path / "tasks.db")
    queue = make_queue(journal=path, workers=1, name="journal-program")

    @queue.task
    def broken(message: str) -> None:
        raise ValueError(message)

    @queue.task
    def tomorrow() -> None:
        pass

    dead = broken.submit("journal boom")
    queue.join(WAIT)
    assert dead.state is TaskState.FAILED
    scheduled = tomorrow.options(delay=86400).submit()
    return path, queue, dead, scheduled


def test_a_journal_dashboard_shows_what_the_file_holds(journal_program: Any,
                                                       dashboards: Any) -> None:
    path, queue, dead, scheduled = journal_program
    source = JournalSource(path)
    try:
        dashboard = dashboards(source)
        assert get(dashboard, "/api/config").json == {
            "name": path, "actions": False, "refresh_seconds": 1}
        stats = get(dashboard, "/api/stats").json
        assert list(stats) == [field.name for field in dataclasses.fields(Stats)]
        assert stats["dead_letters"] == 1 and stats["scheduled"] == 1
        letters = get(dashboard, "/api/dead").json
        assert letters["count"] == 1
        letter = letters["dead_letters"][0]
        assert letter["task_id"] == dead.id and letter["name"].endswith("broken")
        assert letter["error"] == "ValueError: journal boom"
        assert "journal boom" in letter["traceback"]
        task = get(dashboard, f"/api/tasks/{scheduled.id}").json
        assert task["id"] == scheduled.id and task["state"] == "scheduled"
        assert task["due"] is not None and task["due"] > time.time() + 3600
        assert get(dashboard, "/api/tasks/nope").status == 404
        overview = get(dashboard, "/api/overview").json
        assert [t["id"] for t in overview["scheduled"]] == [scheduled.id]
    finally:
        source.close()


def test_a_journal_dashboard_refuses_to_act_even_with_the_token(journal_program: Any,
                                                                dashboards: Any) -> None:
    path, queue, dead, scheduled = journal_program
    source = JournalSource(path)
    try:
        dashboard = dashboards(source, token=TOKEN)
        assert get(dashboard, "/api/config").json["actions"] is False
        for target in (f"/api/dead/{dead.id}/requeue", "/api/dead/purge",
                       f"/api/tasks/{scheduled.id}/cancel"):
            answer = post(dashboard, target)
            assert answer.status == 409, target
            assert "changed only by the program that owns it" in answer.json["error"]
            assert post(dashboard, target, token="wrong").status == 403
        assert [d.task_id for d in queue.dead_letters()] == [dead.id]
        assert scheduled.state is TaskState.SCHEDULED
    finally:
        source.close()
