"""Helpers of the multi-process Redis tests: a private redis-server, worker processes.

A test that kills or restarts Redis starts its own ``redis-server`` on a
free port in a temporary folder (:class:`PrivateRedis`), never the shared
one. Worker processes are real ``python -m taskqueue worker
redis_app:queue`` commands (:class:`Workers`), told where to go by the
environment (see ``tests/redis_app.py``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of one test's own: its port, its folder, its persistence.

    Args:
        folder: where its data (and log) go.
        persistent: ``appendonly yes`` with ``appendfsync always``, so that
            a restart loses no write Redis acknowledged.
        password: ``requirepass``, if given.
    """

    def __init__(self, folder: Path, *, persistent: bool = True,
                 password: Optional[str] = None) -> None:
        if shutil.which("redis-server") is None:
            if os.environ.get("TASKQUEUE_REQUIRE_REDIS") == "1":
                pytest.fail("TASKQUEUE_REQUIRE_REDIS=1 but redis-server is not on PATH")
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = free_port()
        self.password = password
        self._persistent = persistent
        self._process: Optional[subprocess.Popen] = None
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        """Its URL, password included."""

    def start(self, timeout: float = 20.0) -> None:
        """Start it (again, with the same data); return once it accepts connections.

        It says so on its log (after loading its append-only file), which is
        read from its stdout: nothing is polled.
        """
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.folder), "--save", "", "--logfile", "",
                "--appendonly", "yes" if self._persistent else "no"]
        if self._persistent:
            args += ["--appendfsync", "always"]
        if self.password:
            args += ["--requirepass", self.password]
        self._process = process = subprocess.Popen(args, stdout=subprocess.PIPE,
                                                   stderr=subprocess.STDOUT)
        ready = threading.Event()

        def read_log() -> None:
            with open(self.folder / "redis.log", "ab") as log:
                for line in process.stdout:  # type: ignore[union-attr]
                    log.write(line)
                    if b"Ready to accept connections" in line:
                        ready.set()

        threading.Thread(target=read_log, daemon=True).start()
        if not ready.wait(timeout):
            self.kill()
            pytest.fail(f"the private redis-server on port {self.port} did not start "
                        f"(see {self.folder / 'redis.log'})")

    def kill(self) -> None:
        """SIGKILL it (as a crash would) and wait until it is gone."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            self._process = None

    def client(self) -> Any:
        """A redis-py client of it."""
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=60)


class Workers:
    """``python -m taskqueue worker redis_app:queue`` processes of one test.

    Args:
        url, namespace: where their queue is.
        folder: where each worker's stderr log is written.
        env: more of ``redis_app``'s settings (``TQ_TEST_VISIBILITY``, ...).
    """

    def __init__(self, url: str, namespace: str, folder: Path,
                 env: Optional[Dict[str, str]] = None) -> None:
        self.url, self.namespace, self.folder = url, namespace, folder
        folder.mkdir(parents=True, exist_ok=True)
        self._env = dict(env or {})
        self.processes: List[subprocess.Popen] = []
        self._logs: Dict[int, Path] = {}

    def spawn(self, *args: str, threads: int = 4) -> subprocess.Popen:
        """Start one worker process with ``threads`` worker threads (not waiting for it)."""
        env = dict(os.environ, TQ_TEST_URL=self.url, TQ_TEST_NAMESPACE=self.namespace,
                   PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), **self._env)
        log = self.folder / f"worker-{len(self.processes)}.log"
        with open(log, "wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "taskqueue", "worker", "redis_app:queue",
                 "--workers", str(threads), *args],
                cwd=str(TESTS), env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        self.processes.append(process)
        self._logs[process.pid] = log
        return process

    def log(self, process: subprocess.Popen) -> str:
        """What ``process`` has written to its stderr so far."""
        return self._logs[process.pid].read_text(errors="replace")

    def alive(self) -> List[subprocess.Popen]:
        """The worker processes still running."""
        return [p for p in self.processes if p.poll() is None]

    def stop_all(self, timeout: float = 30.0) -> List[int]:
        """SIGTERM every live worker, wait for it; return their exit codes."""
        live = self.alive()
        for process in live:
            process.send_signal(signal.SIGTERM)
        codes = []
        for process in live:
            try:
                codes.append(process.wait(timeout))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait())
        return codes

    def kill_all(self) -> None:
        """SIGKILL whatever is left (a test's cleanup)."""
        for process in self.alive():
            try:
                os.kill(process.pid, signal.SIGCONT)
            except OSError:
                pass
            process.kill()
            process.wait()
