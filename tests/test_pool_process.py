"""Whole-process behaviour: interpreter exit drains, forked children fail cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_script(source: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source), *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.timeout(90)
def test_a_script_that_forgets_shutdown_still_finishes_its_work(tmp_path: Path) -> None:
    out = tmp_path / "done.txt"
    for _ in range(3):
        result = run_script("""
            import sys, threading
            from taskqueue import Backoff, TaskQueue
            queue = TaskQueue(workers=2, retries=1, backoff=Backoff.constant(0.02))
            lock, tries = threading.Lock(), set()
            def write(i):
                with lock:
                    if i % 10 == 0 and i not in tries:
                        tries.add(i)
                        raise ConnectionError(i)  # finishes only through a retry
                    with open(sys.argv[1], "a") as f:
                        f.write(f"{i}\\n")
            for i in range(200):
                queue.submit(write, i)
            # no shutdown(), no join(): the interpreter exits here
        """, str(out))
        assert result.returncode == 0, result.stderr
        assert sorted(int(x) for x in out.read_text().split()) == list(range(200))
        out.unlink()


@pytest.mark.timeout(90)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_a_clear_error_and_can_start_fresh() -> None:
    result = run_script("""
        import os, sys, threading, warnings
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, on purpose
        from taskqueue import QueueClosed, TaskQueue
        queue = TaskQueue(workers=4, maxsize=64)
        stop = threading.Event()
        def produce():
            while not stop.is_set():
                try:
                    queue.submit(sum, range(100))
                except QueueClosed:
                    return
        producers = [threading.Thread(target=produce) for _ in range(2)]
        for p in producers:
            p.start()
        failures = 0
        for _ in range(20):  # fork while the pool is busy, many times
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    queue.submit(print, "must not run")
                    code = 3
                except QueueClosed as exc:
                    if "forked child" not in str(exc):
                        code = 4
                for call in (queue.stats, queue.join, queue.dead_letters):
                    try:
                        call()
                        code = 5
                    except QueueClosed:
                        pass
                queue.shutdown()  # harmless in the child
                fresh = TaskQueue(workers=2)
                if fresh.submit(pow, 2, 8).result(timeout=10) != 256:
                    code = 6
                fresh.shutdown()
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            failures += os.waitstatus_to_exitcode(status) != 0
        stop.set()
        for p in producers:
            p.join()
        queue.shutdown()
        print("failures", failures)
        sys.exit(failures)
    """)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "failures 0" in result.stdout
