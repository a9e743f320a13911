"""The booking-confirmation demo behind ``python -m taskqueue demo``.

Each of N bookings submits one task, "send the confirmation email", to a
fake mail service that is slow (5-30 ms a call) and fails a set share of
its calls. Failed sends are retried with backoff; those that fail every
attempt end as dead letters. While the queue drains, a one-line progress
display is kept up to date; at the end come the queue's final stats and a
summary of the dead letters.

Whether a given call fails, and how long it takes, depends only on the seed,
the booking and the attempt, never on which worker thread got there first:
one seed always gives the same outcomes (succeeded, failed, retried and
which bookings were dead-lettered). Only the timings vary.

With a broker URL (``python -m taskqueue demo --broker redis://...``) the
same bookings go through Redis, sent by worker processes: that variant is
:mod:`taskqueue.demo_redis`, which uses the pieces here. This module
imports it only inside :func:`run_demo`, when a broker is given, so the
in-memory demo loads nothing of Redis.

The pieces are importable on their own: :class:`FakeMailService`,
:class:`Tally` (the event listener), :class:`ProgressDisplay`,
:func:`simulate` (runs the queue), :func:`report` (prints the outcome) and
:func:`run_demo` (all of it). Only public names of :mod:`taskqueue` are used.
"""

from __future__ import annotations

import collections
import random
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Protocol, Set, TextIO, Tuple

from . import Backoff, DeadLetter, Event, EventKind, Stats, TaskFailed, TaskQueue

__all__ = [
    "MailServerError",
    "FakeMailService",
    "Tally",
    "Counts",
    "CountSource",
    "ProgressDisplay",
    "progress_line",
    "DemoResult",
    "WorkerProcess",
    "DemoError",
    "simulate",
    "report",
    "run_demo",
    "write_header",
    "RETRIES",
    "BACKOFF",
    "LATENCY",
    "WORKER_PROCESSES",
    "TICK",
]

RETRIES = 3
"""Retries per email after a failed first attempt."""
BACKOFF = Backoff(base=0.05, max=0.5)
"""The delays between attempts: 50 ms doubling, at most 0.5 s, with jitter."""
LATENCY = (0.005, 0.030)
"""The shortest and longest time, in seconds, one call to the mail service takes."""
SHOWN_DEAD_LETTERS = 5
"""How many dead letters the summary lists one by one."""
# Here, not in demo_redis: the CLI's help names it, and the CLI imports only this module.
WORKER_PROCESSES = 2
"""How many worker processes the demo on a broker starts."""
TICK = 0.1
"""Seconds between looks at the queue while it drains."""

_TTY_INTERVAL = 0.1  # a terminal line is rewritten in place: refresh it often
_PLAIN_INTERVAL = 1.0  # a log or a pipe gets whole lines: one a second is plenty


class MailServerError(Exception):
    """Raised by :class:`FakeMailService` when a call fails."""


class DemoError(Exception):
    """Raised when the demo cannot run on the broker it was given (its message is one line)."""


class FakeMailService:
    """A mail service that is slow and unreliable on purpose.

    Each call sleeps a random 5-30 ms and then fails with
    :class:`MailServerError` with probability ``failure_rate``. The draw for
    a call is seeded from ``(seed, booking, attempt)``, so the outcomes do
    not depend on how worker threads interleave.

    Args:
        failure_rate: the share of calls that fail, from 0 to 1.
        seed: makes the outcomes repeatable.
        sleep: how a call waits out its latency; ``time.sleep`` (tests pass
            a recorder instead).

    Raises:
        ValueError: ``failure_rate`` is not between 0 and 1.

    Safe to call from any number of threads.
    """

    def __init__(self, failure_rate: float, seed: int, *,
                 sleep: Callable[[float], object] = time.sleep) -> None:
        if not 0.0 <= failure_rate <= 1.0:  # written this way round, NaN fails too
            raise ValueError(f"failure_rate must be between 0 and 1, got {failure_rate!r}")
        self.failure_rate = failure_rate
        self.seed = seed
        self._sleep = sleep
        self._lock = threading.Lock()
        self._calls: Dict[int, int] = collections.Counter()

    def send_confirmation(self, booking_id: int) -> str:
        """Send the confirmation email for one booking (the demo's task).

        Returns:
            A receipt naming the booking.

        Raises:
            MailServerError: this call failed.
        """
        with self._lock:
            self._calls[booking_id] += 1
            attempt = self._calls[booking_id]
        return self.send(booking_id, attempt)

    def send(self, booking_id: int, attempt: int) -> str:
        """Make attempt number ``attempt`` (from 1) at one booking's email.

        As :meth:`send_confirmation`, with the attempt told instead of
        counted: for a worker process, which sees only some of a booking's
        attempts (the others ran in another process).

        Returns:
            A receipt naming the booking.

        Raises:
            MailServerError: this call failed.
        """
        # A string seed is hashed with SHA-512: stable across runs and
        # platforms, unlike hash() of a tuple.
        draw = random.Random(f"{self.seed}:{booking_id}:{attempt}")
        self._sleep(draw.uniform(*LATENCY))
        if draw.random() < self.failure_rate:
            raise MailServerError(
                f"mail server did not accept the message (booking {booking_id}, attempt {attempt})")
        return f"confirmation for booking {booking_id} sent"


class Counts(NamedTuple):
    """What the bookings have done so far, as seen by :class:`Tally`."""

    succeeded: int
    """Emails sent."""
    failed: int
    """Bookings whose email failed every attempt."""
    retrying: int
    """Bookings whose email failed at least once and that have not ended yet."""
    retries: int
    """Failed attempts that were retried, in all."""

    @property
    def done(self) -> int:
        """Bookings that have ended, either way."""
        return self.succeeded + self.failed


class Tally:
    """A queue listener that counts what happens to the bookings.

    Pass it to :meth:`TaskQueue.add_listener`. Workers call it from their
    own threads, so every update and read takes one lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._succeeded = 0
        self._failed = 0
        self._retries = 0
        self._between_attempts: Set[object] = set()

    def __call__(self, event: Event) -> None:
        """Count one event (called by the queue, from any thread)."""
        kind = event.kind
        with self._lock:
            if kind is EventKind.RETRYING:
                self._retries += 1
                self._between_attempts.add(event.handle)
            elif kind is EventKind.SUCCEEDED:
                self._succeeded += 1
                self._between_attempts.discard(event.handle)
            elif kind is EventKind.FAILED:
                self._failed += 1
                self._between_attempts.discard(event.handle)

    def counts(self) -> Counts:
        """Return the counts so far (safe from any thread)."""
        with self._lock:
            return Counts(self._succeeded, self._failed,
                          len(self._between_attempts), self._retries)


def progress_line(counts: Counts, total: int, elapsed: float) -> str:
    """Return the one-line progress display, e.g. ``done 120/200 | retrying 4 | ...``."""
    rate = counts.done / elapsed if elapsed > 0 else 0.0
    return (f"done {counts.done}/{total} | retrying {counts.retrying} | "
            f"failed {counts.failed} | {rate:.1f}/s")


class CountSource(Protocol):
    """Where :class:`ProgressDisplay` reads the counts: a :class:`Tally`, or the Redis stats."""

    def counts(self) -> Counts:
        """Return the counts so far."""


class ProgressDisplay:
    """Shows :func:`progress_line` while the queue drains.

    On a terminal one line is rewritten in place (``\\r``) every
    0.1 s; anywhere else a plain line is printed about once a second, so a
    log file gets readable lines and no control characters.

    Args:
        out: where to write.
        tty: whether ``out`` is a terminal.
        total: how many bookings there are.
        tally: the source of the counts (a :class:`Tally`).
        clock: returns seconds; ``time.monotonic``.

    Used from one thread (the one running the demo).
    """

    def __init__(self, out: TextIO, tty: bool, total: int, tally: CountSource, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._out = out
        self._tty = tty
        self._total = total
        self._tally = tally
        self._clock = clock
        self._interval = _TTY_INTERVAL if tty else _PLAIN_INTERVAL
        self._started = clock()
        self._shown_at: Optional[float] = None
        self._width = 0

    def tick(self) -> None:
        """Show the progress if the last showing is old enough."""
        now = self._clock()
        if self._shown_at is None or now - self._shown_at >= self._interval:
            self._show(now)

    def finish(self) -> None:
        """Show the final progress and end the line."""
        self._show(self._clock())
        if self._tty:
            self._out.write("\n")
            self._out.flush()

    def end_line(self) -> None:
        """End a line left open on a terminal (when stopping early)."""
        if self._tty and self._shown_at is not None:
            self._out.write("\n")
            self._out.flush()

    def _show(self, now: float) -> None:
        line = progress_line(self._tally.counts(), self._total, now - self._started)
        if self._tty:
            # Pad over the tail of a longer previous line.
            self._out.write("\r" + line.ljust(self._width))
            self._width = max(self._width, len(line))
        else:
            self._out.write(line + "\n")
        self._out.flush()
        self._shown_at = now


@dataclass(frozen=True)
class WorkerProcess:
    """One worker process of the demo on a broker, as it ended."""

    pid: int
    """Its process id."""
    sent: int
    """The emails it sent (told by each task's return value)."""
    exit_status: Optional[int]
    """How it exited once stopped: 0 for a graceful stop; negative: killed by that signal."""


@dataclass(frozen=True)
class DemoResult:
    """What one run of the demo came to."""

    stats: Stats
    """The queue's final stats."""
    dead_letters: List[DeadLetter]
    """The bookings whose email was never sent, oldest failure first."""
    elapsed: float
    """Seconds from the first submit to the last task ending."""
    processes: Tuple[WorkerProcess, ...] = ()
    """The worker processes that ran the tasks (on a broker); none when they ran here."""


def simulate(bookings: int, workers: int, failure_rate: float, seed: int, *,
             out: TextIO, tty: bool, journal: Optional[str] = None) -> DemoResult:
    """Submit one confirmation email per booking and wait for all of them.

    The progress display goes to ``out``. If anything interrupts the wait
    (Ctrl-C raising ``KeyboardInterrupt``, a closed pipe), the tasks not yet
    started are cancelled and the workers stopped before the error goes on.

    With ``journal`` (a file path) the queue is journaled: a run that was
    interrupted (Ctrl-C, ``kill -9``) leaves its unfinished emails in the
    file, and the next run with the same file sends those instead of new
    bookings. How many were recovered is printed to ``out``.

    Raises:
        ValueError: ``bookings`` < 1, or another argument is out of range.
        JournalError: the journal file cannot be used (JournalLocked: it is in use).
    """
    if bookings < 1:
        raise ValueError(f"bookings must be >= 1, got {bookings!r}")
    service = FakeMailService(failure_rate, seed)
    tally = Tally()
    queue = TaskQueue(workers=workers, name="booking-demo", retries=RETRIES,
                      backoff=BACKOFF, retry_on=MailServerError, rng=random.Random(seed),
                      journal=journal)
    # A journaled queue runs registered task functions only: the next run
    # finds the function again by this name.
    send = queue.task(service.send_confirmation, name="send_confirmation")
    queue.add_listener(tally)
    new_bookings = range(1, bookings + 1)
    if journal is not None:
        queue.start()  # reads back what an earlier run left unfinished
        if queue.recovered:
            bookings, new_bookings = queue.recovered, range(0)
            out.write(f"Recovered {queue.recovered} unfinished email(s) from {journal}; "
                      "sending those instead of new bookings\n")
        else:
            out.write(f"Nothing to recover from {journal}; interrupt this run (Ctrl-C, "
                      "kill -9) and run again to see the rest sent\n")
        out.flush()
    display = ProgressDisplay(out, tty, bookings, tally)
    started = time.monotonic()
    try:
        for booking_id in new_bookings:
            send.submit(booking_id)
            display.tick()  # submit may block on a full queue: keep the display alive
        while not queue.join(timeout=TICK):
            display.tick()
        elapsed = time.monotonic() - started
        display.finish()
    except BaseException:
        display.end_line()
        # Shutting down plainly would drain every queued email first.
        queue.shutdown(cancel_futures=True)
        raise
    queue.shutdown()
    return DemoResult(queue.stats(), queue.dead_letters(), elapsed)


def report(result: DemoResult, out: TextIO) -> None:
    """Print the final stats, the worker processes (if any) and the dead-letter summary of a run."""
    _report_stats(result, out)
    out.write("\n")
    if result.processes:
        _report_processes(result.processes, out)
        out.write("\n")
    _report_dead_letters(result.dead_letters, result.stats, out)


def _report_stats(result: DemoResult, out: TextIO) -> None:
    s = result.stats
    rows = [
        ("submitted", str(s.submitted)),
        ("succeeded", str(s.succeeded)),
        ("failed", str(s.failed)),
        ("cancelled", str(s.cancelled)),
        ("retried", str(s.retried)),
    ]
    if result.processes:
        # Timings are kept by the worker threads that take them, in their
        # own processes; this one counts what Redis counted, and the clock.
        attempts = s.succeeded + s.failed + s.retried
        rate = attempts / result.elapsed if result.elapsed > 0 else 0.0
        rows.append(("rate", f"{rate:.1f} attempts/s (whole run)"))
    else:
        rows += [
            ("wait p50/p99", f"{s.wait_p50 * 1000:.1f} / {s.wait_p99 * 1000:.1f} ms"),
            ("run p50/p99", f"{s.run_p50 * 1000:.1f} / {s.run_p99 * 1000:.1f} ms"),
            ("rate", f"{s.completed_per_second:.1f} attempts/s (recent)"),
        ]
    rows.append(("elapsed", f"{result.elapsed:.2f} s"))
    out.write("Stats\n")
    for label, value in rows:
        out.write(f"  {label:<13} {value}\n")


def _report_processes(processes: Tuple[WorkerProcess, ...], out: TextIO) -> None:
    out.write("Worker processes\n")
    for process in processes:
        status = "still running" if process.exit_status is None \
            else f"exit status {process.exit_status}"
        out.write(f"  pid {process.pid}: {process.sent} sent, {status}\n")


def _report_dead_letters(letters: List[DeadLetter], stats: Stats, out: TextIO) -> None:
    dropped = f" ({stats.dead_letters_dropped} more dropped)" if stats.dead_letters_dropped else ""
    out.write(f"Dead letters: {stats.dead_letters}{dropped}\n")
    # By booking, not by failure time: the same seed then lists the same lines.
    shown = sorted(letters, key=_booking_of)[:SHOWN_DEAD_LETTERS]
    for letter in shown:
        out.write(f"  booking {_booking_of(letter)}: {letter.attempts} attempts, "
                  f"{_reason(letter.exception)}\n")
    if len(letters) > len(shown):
        out.write(f"  ... and {len(letters) - len(shown)} more\n")


def _booking_of(letter: DeadLetter) -> int:
    return letter.task.args[0]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TaskFailed):  # it failed in a worker process: say what it raised there
        return f"{exc.type_name.rsplit('.', 1)[-1]}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def run_demo(bookings: int, workers: int, failure_rate: float, seed: Optional[int] = None,
             out: Optional[TextIO] = None, tty: Optional[bool] = None,
             journal: Optional[str] = None, broker: Optional[str] = None,
             worker_log_level: str = "critical") -> int:
    """Run the whole demo: header, live progress, final stats, dead letters.

    Args:
        bookings: how many bookings (>= 1), one confirmation email each.
        workers: worker threads (>= 1); with ``broker``, in each worker process.
        failure_rate: the share of mail-service calls that fail, 0 to 1.
        seed: makes the outcomes repeatable; a random one (printed) if None.
        out: where everything is written; ``sys.stdout`` (as it is at
            the call) if None.
        tty: whether ``out`` is a terminal; asked of ``out`` if None.
        journal: a journal file for the queue (see :func:`simulate`).
        broker: a Redis URL: the emails go through Redis and are sent by
            worker processes (see :func:`taskqueue.demo_redis.simulate_on_redis`).
        worker_log_level: with ``broker``: the worker processes' ``--log-level``.

    Returns:
        The exit status: 0, as dead letters are an outcome of the simulation,
        not an error of the program; 1 if a worker process did not exit 0
        when it was stopped.

    Raises:
        ValueError: an argument is out of range, or both ``journal`` and
            ``broker`` were given.
        KeyboardInterrupt: after the queue was shut down, as :func:`simulate`.
        JournalError: as :func:`simulate`.
        DemoError, BrokerError: as :func:`taskqueue.demo_redis.simulate_on_redis`.
    """
    if journal is not None and broker is not None:
        raise ValueError("give journal or broker, not both")
    if out is None:
        out = sys.stdout
    if seed is None:
        seed = random.randrange(1_000_000)
    if tty is None:
        tty = _is_terminal(out)
    if broker is None:
        write_header(out, bookings, f"{workers} workers", failure_rate, seed)
        result = simulate(bookings, workers, failure_rate, seed, out=out, tty=tty,
                          journal=journal)
    else:
        # Imported here alone: the in-memory demo never loads the Redis one.
        from .demo_redis import simulate_on_redis

        result = simulate_on_redis(broker, bookings, workers, failure_rate, seed, out=out,
                                   tty=tty, log_level=worker_log_level)
    out.write("\n")
    report(result, out)
    out.flush()
    return 0 if all(process.exit_status == 0 for process in result.processes) else 1


def write_header(out: TextIO, bookings: int, workers: str, failure_rate: float,
                 seed: int) -> None:
    """Write the two lines that open a run: what is sent, by whom, and how to repeat it."""
    out.write(f"Sending {bookings} booking confirmations: {workers}, "
              f"failure rate {failure_rate:g}, seed {seed}\n")
    out.write(f"(up to {RETRIES} retries each, backoff from {BACKOFF.base:g} s "
              f"to {BACKOFF.max:g} s; --seed {seed} repeats these outcomes)\n")


def _is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # no isatty, or the stream is closed
        return False
