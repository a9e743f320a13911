"""The dashboard's HTTP server: routing, the token, JSON, the page's files, a sampler.

Standard library only (``http.server``), one :class:`ThreadingHTTPServer`
in a daemon thread of the process that serves it. What it shows comes
from a *source* (:mod:`taskqueue.dashboard.sources`); the page
(``static/``) polls the JSON API below it, which the README documents.

Safe by default, unlike Flower before CVE-2022-30034 (every interface, no
authentication, no CSRF protection):

- It binds 127.0.0.1. Any address that is not loopback needs a token,
  or :func:`serve` refuses it before binding anything; and there the API's
  reads need the token too (401 without it), since task names, errors and
  tracebacks are nobody else's business. Only the page's own files, which
  hold no data, are served to anyone.
- Without a token it is read-only: every POST is a 403. With one, an
  action (requeue, purge, cancel) is a POST carrying ``Authorization:
  Bearer <token>``, compared in constant time. A browser adds that header
  to no request by itself (the page keeps the token in sessionStorage,
  never in a cookie), and a cross-site page cannot add it without a CORS
  preflight this server never grants: a forged request carries no token.
- A GET never changes anything (405 on an action's path).
- Bound to loopback, it answers only requests whose ``Host`` names it by a
  loopback name, so a DNS-rebinding page cannot read it either.
- Every response says ``no-store``, ``nosniff``, ``DENY`` and a
  ``Content-Security-Policy`` that allows no inline script or style.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
import logging
import re
import socket
import socketserver
import threading
import time
from collections import deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote

from taskqueue import DeadLetter, TaskFailed, TaskQueueError

from .sources import CannotAct

__all__ = ["Dashboard", "serve", "REFRESH_SECONDS", "SAMPLE_INTERVAL", "SERIES_LENGTH",
           "MAX_BODY", "STATIC"]

log = logging.getLogger("taskqueue.dashboard")

REFRESH_SECONDS = 1
"""How often the page asks for fresh figures (``/api/config``'s ``refresh_seconds``)."""
SAMPLE_INTERVAL = 1.0
"""Seconds between two samples of the source's stats for ``/api/series``."""
SERIES_LENGTH = 600
"""How many samples ``/api/series`` keeps: ten minutes of them."""
MAX_BODY = 64 * 1024
"""The largest request body read (and ignored); a larger one is a 413."""
OVERVIEW_LIMIT, MAX_OVERVIEW_LIMIT = 100, 1000
POLL_INTERVAL = 0.1
STATIC = Path(__file__).resolve().parent / "static"
"""Where the page's files are (package data)."""

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}
JSON = "application/json"

SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'"),
    ("Referrer-Policy", "no-referrer"),
)

_STATIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9]+)+")
_READS = {"/api/config", "/api/stats", "/api/series", "/api/overview", "/api/dead"}
_TASK = re.compile(r"/api/tasks/([^/]+)")
_REQUEUE = re.compile(r"/api/dead/([^/]+)/requeue")
_CANCEL = re.compile(r"/api/tasks/([^/]+)/cancel")
_PURGE = "/api/dead/purge"


class Dashboard:
    """A running dashboard: its address, and how to stop it.

    Made by :func:`serve` (or :meth:`TaskQueue.serve_dashboard`); a context
    manager that closes it on exit.
    """

    def __init__(self, server: "_Server", threads: List[threading.Thread],
                 sampler: "_Sampler") -> None:
        self._server = server
        self._threads = threads
        self._sampler = sampler
        self._lock = threading.Lock()
        self._closed = False
        host, port = server.server_address[:2]
        self.host: str = host
        """The address it is bound to."""
        self.port: int = port
        """The port it listens on (the one picked, if 0 was asked for)."""
        shown = f"[{host}]" if ":" in host else host
        self.url: str = f"http://{shown}:{port}/"
        """Where to open it, ``http://127.0.0.1:PORT/``."""

    def close(self) -> None:
        """Stop serving, free the port and join the server's threads; idempotent.

        Requests being answered in their own (daemon) threads finish on their
        own. Safe from any thread.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._sampler.stop()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Dashboard {self.url} {'closed' if self._closed else 'serving'}>"


def serve(source: Any, host: str = "127.0.0.1", port: int = 0,
          token: Optional[str] = None) -> Dashboard:
    """Serve a dashboard of ``source`` over HTTP, from daemon threads of this process.

    Args:
        source: what to show (a :class:`~taskqueue.dashboard.QueueSource`
            or :class:`~taskqueue.dashboard.JournalSource`).
        host: the address to bind. Without a token, only a loopback one
            (``127.0.0.1``, ``::1``, ``localhost``).
        port: the port; 0 picks a free one (see the result's ``url``).
        token: the secret an action's request must carry (``Authorization:
            Bearer <token>``); None serves read-only. On a non-loopback
            ``host`` every ``/api/`` read must carry it as well.

    Returns:
        The running :class:`Dashboard`. Its threads are named after the
        source (``f"{source.name}-dashboard"``).

    Raises:
        TypeError: ``host``, ``port`` or ``token`` has the wrong type.
        ValueError: a non-loopback ``host`` without a token, a port out of
            range, or an empty token; nothing is bound then.
        OSError: the address cannot be bound (the port is in use, say).
    """
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, got {host!r}")
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"port must be an int, got {port!r}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be from 0 to 65535, got {port}")
    if token is not None:
        if not isinstance(token, str):
            raise TypeError(f"token must be a str or None, got {type(token).__name__}")
        if not token or not all(33 <= ord(c) <= 126 for c in token):
            # What an Authorization header can carry as it is.
            raise ValueError("token must be a non-empty str of printable ASCII without spaces")
    loopback = is_loopback(host)
    if not loopback and token is None:
        raise ValueError(f"host {host!r} is not a loopback address: a dashboard anyone on the "
                         "network can reach needs a token (token=..., or --token); or bind "
                         "host='127.0.0.1'")
    server_class = _Server6 if ":" in host else _Server
    server = server_class((host, port), _Handler)
    sampler = _Sampler(source)
    server.app = _App(source, token, sampler, allowed_hosts(host, server.server_address[1])
                      if loopback else None)
    name = f"{source.name}-dashboard"
    # poll_interval: how long close() may wait for the loop to see shutdown().
    threads = [threading.Thread(target=server.serve_forever, args=(POLL_INTERVAL,), name=name,
                                daemon=True),
               threading.Thread(target=sampler.run, name=f"{name}-sampler", daemon=True)]
    for thread in threads:
        thread.start()
    dashboard = Dashboard(server, threads, sampler)
    log.debug("dashboard of %s at %s (%s)", source.name, dashboard.url,
              "actions need the token" if token is not None else "read-only")
    return dashboard


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "" (every interface), or a name that could be anything
        return False


def allowed_hosts(host: str, port: int) -> frozenset:
    """The ``Host`` headers a loopback dashboard answers (any other may be DNS rebinding)."""
    names = {"127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host}
    allowed = {f"{name}:{port}" for name in names}
    if port == 80:  # a browser leaves the default port out
        allowed |= names
    return frozenset(name.lower() for name in allowed)


# -- the server ------------------------------------------------------------------------

class _Sampler:
    """Samples the source's counters once a second, for ``/api/series``."""

    def __init__(self, source: Any, interval: float = SAMPLE_INTERVAL,
                 length: int = SERIES_LENGTH) -> None:
        self.interval = interval
        self._source = source
        self._points: Deque[Dict[str, Any]] = deque(maxlen=length)
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def run(self) -> None:
        while True:
            self.sample()
            if self._stopped.wait(self.interval):
                return

    def sample(self) -> None:
        try:
            stats = self._source.stats()
        except Exception:  # a broker outage, a journal gone: the next sample may work
            log.debug("dashboard: cannot sample the stats of %s", self._source.name,
                      exc_info=True)
            return
        point = {"t": time.time(), "submitted": stats.submitted, "succeeded": stats.succeeded,
                 "failed": stats.failed, "cancelled": stats.cancelled, "retried": stats.retried}
        with self._lock:
            self._points.append(point)

    def points(self) -> List[Dict[str, Any]]:
        with self._lock:
            return list(self._points)

    def stop(self) -> None:
        self._stopped.set()


class _App:
    """What every request of one dashboard shares."""

    def __init__(self, source: Any, token: Optional[str], sampler: _Sampler,
                 hosts: Optional[frozenset]) -> None:
        self.source = source
        self.token = token.encode("ascii") if token is not None else None
        self.actions = token is not None and bool(source.can_act)
        self.sampler = sampler
        self.hosts = hosts  # None: not bound to loopback, no Host check
        # Off loopback, anyone who can reach the port could read tracebacks:
        # the token guards reads there too. (On loopback, the Host check
        # keeps other sites' pages out, and the machine's users are trusted.)
        self.reads_need_token = hosts is None


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow client never holds up close() or the interpreter's exit
    app: _App

    def server_bind(self) -> None:
        # HTTPServer's looks up the host's full name (socket.getfqdn), which
        # can wait on DNS for seconds; nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr (a client that hung up, mostly).
        log.debug("dashboard: error answering %s", client_address, exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Refused(Exception):
    """Answer the request with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: Tuple[Tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "taskqueue-dashboard"
    sys_version = ""
    timeout = 30  # seconds a client may take to send its request

    # -- http.server's hooks

    def do_GET(self) -> None:
        self._answer("GET")

    def do_HEAD(self) -> None:
        self._answer("HEAD")

    def do_POST(self) -> None:
        self._answer("POST")

    def do_PUT(self) -> None:
        self._answer("PUT")

    def do_DELETE(self) -> None:
        self._answer("DELETE")

    def do_PATCH(self) -> None:
        self._answer("PATCH")

    def do_OPTIONS(self) -> None:
        self._answer("OPTIONS")  # no CORS preflight is ever granted

    def log_message(self, format: str, *args: Any) -> None:
        # The request line and status only: never a header (the token).
        log.debug("dashboard %s: " + format, self.address_string(), *args)

    def send_error(self, code: int, message: Optional[str] = None,
                   explain: Optional[str] = None) -> None:
        # http.server's own errors (a malformed request line, say), as JSON too.
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self.log_error("code %d, message %s", code, message)
        self._json(code, {"error": message or phrase},
                   head=getattr(self, "command", None) == "HEAD")

    # -- routing

    def _answer(self, method: str) -> None:
        app = self.server.app
        try:
            self._check_host(app)
            self._read_body()
            path = _path(self.path)
            action = self._action(path)
            if action is not None:
                if method != "POST":
                    raise _Refused(405, f"{path} takes a POST", (("Allow", "POST"),))
                self._authorize(app)
                status, body = action(app)
                self._json(status, body)
                return
            read = self._read(path)
            if read is None:
                raise _Refused(404, f"no such page: {path}")
            if method not in ("GET", "HEAD"):
                raise _Refused(405, f"{path} takes a GET", (("Allow", "GET, HEAD"),))
            if app.reads_need_token and path.startswith("/api/") and not self._has_token(app):
                raise _Refused(401, "this dashboard serves a public address: its API needs "
                                    "the token (Authorization: Bearer <token>)",
                               (("WWW-Authenticate", 'Bearer realm="taskqueue dashboard"'),))
            read(method == "HEAD")
        except _Refused as refused:
            self._json(refused.status, {"error": refused.message}, refused.headers,
                       head=method == "HEAD")
        except CannotAct as exc:
            self._json(409, {"error": _one_line(exc)}, head=method == "HEAD")
        except TaskQueueError as exc:  # QueueFull, QueueClosed, BrokerError, JournalError
            self._json(503, {"error": _one_line(exc)}, head=method == "HEAD")
        except Exception:
            log.error("dashboard: %s %s failed", method, self.path, exc_info=True)
            self._json(500, {"error": "the dashboard failed to answer; see its log"},
                       head=method == "HEAD")

    def _check_host(self, app: _App) -> None:
        if app.hosts is None:
            return
        host = (self.headers.get("Host") or "").strip().lower()
        if host not in app.hosts:
            port = self.server.server_address[1]
            raise _Refused(421, f"this dashboard answers only as http://127.0.0.1:{port}/ "
                                f"(Host {host!r} refused: it may be a DNS rebinding attack)")

    def _read_body(self) -> None:
        # Every body is ignored, but read (up to MAX_BODY), so that closing
        # the connection does not reset it before the client has the answer.
        if self.headers.get("Transfer-Encoding"):
            raise _Refused(411, "a body must come with a Content-Length")
        raw = self.headers.get("Content-Length")
        if raw is None:
            return
        try:
            length = int(raw)
            if length < 0:
                raise ValueError(raw)
        except ValueError:
            raise _Refused(400, f"bad Content-Length {raw!r}") from None
        if length > MAX_BODY:
            self.close_connection = True
            raise _Refused(413, f"a request body may hold at most {MAX_BODY} bytes")
        if length:
            self.rfile.read(length)

    def _has_token(self, app: _App) -> bool:
        # Whether the request carries the dashboard's token, compared in constant time.
        if app.token is None:
            return False
        scheme, _, given = (self.headers.get("Authorization") or "").strip().partition(" ")
        supplied = given.strip().encode("utf-8", "replace")
        return scheme.lower() == "bearer" and hmac.compare_digest(supplied, app.token)

    def _authorize(self, app: _App) -> None:
        if app.token is None:
            raise _Refused(403, "this dashboard is read-only: it was started without a token")
        if not self._has_token(app):
            raise _Refused(403, "an action needs the dashboard's token "
                                "(Authorization: Bearer <token>)")
        source = app.source
        if not source.can_act:
            refusal = getattr(source, "refusal", None)
            raise CannotAct(refusal() if refusal is not None else f"{source.name} cannot act")

    def _action(self, path: str) -> Optional[Callable[[_App], Tuple[int, Any]]]:
        if path == _PURGE:
            return _purge
        match = _REQUEUE.fullmatch(path)
        if match:
            task_id = unquote(match.group(1))
            return lambda app: _requeue(app, task_id)
        match = _CANCEL.fullmatch(path)
        if match:
            task_id = unquote(match.group(1))
            return lambda app: _cancel(app, task_id)
        return None

    def _read(self, path: str) -> Optional[Callable[[bool], None]]:
        if path == "/":
            return lambda head: self._static("index.html", head)
        if path.startswith("/static/"):
            return lambda head: self._static(path[len("/static/"):], head)
        if path in _READS:
            return lambda head: self._json(200, self._api(path), head=head)
        match = _TASK.fullmatch(path)
        if match:
            task_id = unquote(match.group(1))
            return lambda head: self._json(200, _task(self.server.app, task_id), head=head)
        return None

    def _api(self, path: str) -> Any:
        app = self.server.app
        source = app.source
        if path == "/api/config":
            return {"name": source.name, "actions": app.actions,
                    "refresh_seconds": REFRESH_SECONDS}
        if path == "/api/stats":
            return dataclasses.asdict(source.stats())
        if path == "/api/series":
            return {"interval": app.sampler.interval, "points": app.sampler.points()}
        if path == "/api/overview":
            return source.overview(self._limit(OVERVIEW_LIMIT)).to_dict()
        letters = source.dead()
        limit = self._limit(len(letters))
        # The newest ``limit`` of them, still oldest first: what the page shows.
        shown = letters[max(0, len(letters) - limit):] if limit else []
        return {"dead_letters": [letter_dict(letter) for letter in shown],
                "count": len(letters)}

    def _limit(self, default: int) -> int:
        values = parse_qs(self.path.partition("?")[2]).get("limit")
        if not values:
            return default
        try:
            limit = int(values[-1])
            if not 0 <= limit <= MAX_OVERVIEW_LIMIT:
                raise ValueError(limit)
        except ValueError:
            raise _Refused(400, f"limit must be a whole number from 0 to {MAX_OVERVIEW_LIMIT}, "
                                f"got {values[-1]!r}") from None
        return limit

    # -- answering

    def _static(self, name: str, head: bool) -> None:
        # Only a plain file name of a known type, in STATIC itself: no
        # "..", no sub-folder, no link out of it.
        suffix = Path(name).suffix.lower()
        file = STATIC / name
        if (not _STATIC_NAME.fullmatch(name) or suffix not in CONTENT_TYPES
                or not file.is_file() or file.resolve().parent != STATIC):
            raise _Refused(404, f"no such file: {name}")
        self._send(200, file.read_bytes(), CONTENT_TYPES[suffix], head=head)

    def _json(self, status: int, body: Any, headers: Tuple[Tuple[str, str], ...] = (),
              *, head: bool = False) -> None:
        # allow_nan=False: NaN is not JSON; a NaN here is a bug, reported, not sent.
        data = json.dumps(body, allow_nan=False, separators=(",", ":")).encode("utf-8")
        self._send(status, data, JSON, headers, head=head)

    def _send(self, status: int, data: bytes, content_type: str,
              headers: Tuple[Tuple[str, str], ...] = (), *, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in SECURITY_HEADERS + tuple(headers):
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)


# -- the API's answers ------------------------------------------------------------------

def _task(app: _App, task_id: str) -> Any:
    info = app.source.task(task_id)
    if info is None:
        raise _Refused(404, f"unknown task {task_id!r} (never seen, or forgotten)")
    return info.to_dict()


def _requeue(app: _App, task_id: str) -> Tuple[int, Any]:
    new_id = app.source.requeue(task_id)
    if new_id is None:
        raise _Refused(404, f"no dead letter of task {task_id!r}")
    return 200, {"requeued": task_id, "task_id": new_id}


def _purge(app: _App) -> Tuple[int, Any]:
    return 200, {"purged": app.source.purge()}


def _cancel(app: _App, task_id: str) -> Tuple[int, Any]:
    cancelled = app.source.cancel(task_id)
    if cancelled is None:
        raise _Refused(404, f"unknown task {task_id!r} (never seen, or forgotten)")
    if cancelled:
        return 200, {"cancelled": True}
    info = app.source.task(task_id)
    return 409, {"cancelled": False, "state": info.state.value if info is not None else None,
                 "error": f"task {task_id!r} has started or ended; it cannot be cancelled"}


def letter_dict(letter: DeadLetter) -> Dict[str, Any]:
    """A dead letter as ``/api/dead`` lists it."""
    return {"task_id": letter.task_id, "name": letter.name, "attempts": letter.attempts,
            "error": error_text(letter.exception), "traceback": letter.traceback,
            "submitted_at": letter.submitted_at, "failed_at": letter.failed_at}


def error_text(exc: BaseException) -> str:
    """``"Type: message"``, also for a :class:`TaskFailed` (the remote error's); never raises."""
    if isinstance(exc, TaskFailed):
        return f"{exc.type_name}: {exc.message}"
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:
        return f"{type(exc).__name__}: <str() failed>"


def _path(target: str) -> str:
    # Not urlsplit: it would read "//x/y" as a host and a path.
    return target.partition("?")[0].partition("#")[0]


def _one_line(text: object) -> str:
    return " ".join(str(text).split())
