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


# -- the Hardening issue: exit in order, forgotten queues, submit after exit ----------------


PIPELINE = """
    import sys, threading
    from taskqueue import TaskQueue
    a = TaskQueue(workers=1, name="A")
    b = TaskQueue(workers=1, name="B")
    first, second = (a, b) if sys.argv[1] == "ab" else (b, a)
    held = threading.Event()
    def stage2(i):
        held.wait(0.02)  # a moment's work too: it must be waited for, not cut off
        print("done", i, flush=True)
    def stage1(i):
        held.wait(0.002)  # a moment's work, so the hand-offs come while exiting
        try:
            second.submit(stage2, i)
        except Exception as exc:
            print("LOST", i, type(exc).__name__, flush=True)
    for i in range(20):
        first.submit(stage1, i)
    # no shutdown(): the interpreter-exit drain must finish both stages
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("wiring", ["ab", "ba"])
def test_the_exit_drain_finishes_a_pipeline_whichever_queue_came_first(wiring: str) -> None:
    # Queues used to be drained one at a time in no order: a task of queue A
    # that submits to queue B found B closed (20 of 20 hand-offs lost). And a
    # B first started during the drain was not waited for: its tasks were cut
    # off at finalization (seen once in CI as a torn line).
    for _ in range(3):
        result = run_script(PIPELINE, wiring)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("LOST") == 0, result.stdout
        assert sorted(int(line.split()[1]) for line in result.stdout.splitlines()) == \
            list(range(20))


@pytest.mark.timeout(60)
def test_submit_after_the_exit_drain_says_so_as_cpython_does() -> None:
    result = run_script("""
        import atexit
        @atexit.register
        def run_last():          # registered first, so it runs after taskqueue's drain
            try:
                queue.submit(id, None)
            except RuntimeError as exc:
                from taskqueue import QueueClosed
                print("refused", isinstance(exc, QueueClosed), exc, flush=True)
                print("cause", type(exc.__cause__).__name__, exc.__cause__, flush=True)
            try:
                TaskQueue(workers=1).submit(id, None)
            except RuntimeError as exc:
                print("new queue refused", exc, flush=True)
        from taskqueue import TaskQueue
        queue = TaskQueue(workers=2)
        queue.submit(id, 42).result()
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("refused True ")
    assert "cannot schedule new futures after interpreter shutdown" in lines[0]
    assert lines[1] == "cause RuntimeError cannot schedule new futures after interpreter shutdown"
    assert "cannot schedule new futures after interpreter shutdown" in lines[2]


@pytest.mark.timeout(60)
def test_a_queue_dropped_without_shutdown_lets_its_threads_end() -> None:
    # As ThreadPoolExecutor's workers watch a weak reference to it: 200
    # dropped queues used to leave 1,000 threads behind.
    import gc
    import threading

    from taskqueue import TaskQueue

    threads = []
    for round_ in range(40):
        queue = TaskQueue(workers=3, name=f"dropped-{round_}")
        assert queue.submit(abs, -round_).result(timeout=10) == round_
        threads += [t for t in threading.enumerate() if t.name.startswith(f"{queue.name}-")]
        del queue
    assert len(threads) >= 40 * 3  # its workers (and its timers) while it was held
    gc.collect()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive(), thread.name


@pytest.mark.timeout(60)
def test_a_dropped_queue_still_runs_what_it_had_accepted() -> None:
    import gc
    import threading

    from taskqueue import TaskQueue

    done = threading.Event()
    gate = threading.Event()
    queue = TaskQueue(workers=1, name="dropped-busy")
    queue.submit(gate.wait, 10)
    queue.submit(done.set)
    del queue
    gc.collect()
    gate.set()
    assert done.wait(10)
