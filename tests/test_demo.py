"""Tests of the booking-confirmation demo's parts: service, tally, display, run."""

from __future__ import annotations

import dataclasses
import io
import math
import threading
from typing import List, Tuple

import pytest

from conftest import FakeClock
from taskqueue import DeadLetter, Event, EventKind, TaskFailed
from taskqueue.demo import (
    LATENCY,
    RETRIES,
    Counts,
    FakeMailService,
    MailServerError,
    ProgressDisplay,
    Tally,
    WorkerProcess,
    progress_line,
    report,
    run_demo,
    simulate,
)


def no_sleep(_: float) -> None:
    """Stands in for time.sleep where only the outcomes matter."""


def replay(failure_rate: float, seed: int, bookings: int) -> Tuple[List[int], int]:
    """Return (dead-lettered bookings, retries) as the demo's retry rule predicts them."""
    service = FakeMailService(failure_rate, seed, sleep=no_sleep)
    dead, retries = [], 0
    for booking in range(1, bookings + 1):
        for attempt in range(1, RETRIES + 2):
            try:
                service.send_confirmation(booking)
                break
            except MailServerError:
                if attempt <= RETRIES:
                    retries += 1
        else:
            dead.append(booking)
    return dead, retries


# -- the fake mail service ---------------------------------------------------------

def test_service_that_never_fails_sleeps_within_the_latency_range() -> None:
    delays: List[float] = []
    service = FakeMailService(0.0, seed=1, sleep=delays.append)

    receipts = [service.send_confirmation(booking) for booking in range(50)]

    assert receipts[7] == "confirmation for booking 7 sent"
    assert len(delays) == 50
    assert all(LATENCY[0] <= d <= LATENCY[1] for d in delays)
    assert len(set(delays)) > 1  # random, not one fixed delay


def test_service_that_always_fails_raises_mail_server_error() -> None:
    service = FakeMailService(1.0, seed=1, sleep=no_sleep)
    for attempt in range(1, 4):
        with pytest.raises(MailServerError, match=f"booking 5, attempt {attempt}"):
            service.send_confirmation(5)


def outcomes(service: FakeMailService) -> List[bool]:
    results = []
    for booking in range(1, 41):
        for _ in range(4):
            try:
                service.send_confirmation(booking)
                results.append(True)
            except MailServerError:
                results.append(False)
    return results


def test_same_seed_gives_same_outcomes_and_another_seed_others() -> None:
    first = outcomes(FakeMailService(0.5, seed=7, sleep=no_sleep))
    again = outcomes(FakeMailService(0.5, seed=7, sleep=no_sleep))
    other = outcomes(FakeMailService(0.5, seed=8, sleep=no_sleep))

    assert first == again
    assert first != other
    assert 0.3 < first.count(False) / len(first) < 0.7  # about the rate asked for


def test_outcome_depends_on_the_attempt_so_retries_can_succeed() -> None:
    service = FakeMailService(0.5, seed=3, sleep=no_sleep)
    per_booking = [[_succeeds(service, booking) for _ in range(4)] for booking in range(20)]
    assert any(len(set(attempts)) == 2 for attempts in per_booking)


def _succeeds(service: FakeMailService, booking: int) -> bool:
    try:
        service.send_confirmation(booking)
    except MailServerError:
        return False
    return True


def test_an_attempt_told_its_number_ends_as_the_counted_one() -> None:
    # A worker process sees some of a booking's attempts only: it is told their numbers
    counted = outcomes(FakeMailService(0.5, seed=7, sleep=no_sleep))
    told = FakeMailService(0.5, seed=7, sleep=no_sleep)
    assert [_succeeds_as(told, booking, attempt) for booking in range(1, 41)
            for attempt in range(1, 5)] == counted


def _succeeds_as(service: FakeMailService, booking: int, attempt: int) -> bool:
    try:
        service.send(booking, attempt)
    except MailServerError:
        return False
    return True


@pytest.mark.parametrize("rate", [-0.1, 1.5, math.nan])
def test_service_refuses_a_rate_outside_0_to_1(rate: float) -> None:
    with pytest.raises(ValueError, match="failure_rate"):
        FakeMailService(rate, seed=1)


# -- the tally and the progress display --------------------------------------------

def test_tally_counts_events_from_many_threads() -> None:
    # Given 8 threads, each sending 500 tasks through retrying and then an end
    tally = Tally()

    def feed(index: int) -> None:
        for n in range(500):
            handle = object()
            tally(Event(EventKind.STARTED, handle))  # type: ignore[arg-type]
            tally(Event(EventKind.RETRYING, handle, MailServerError()))  # type: ignore[arg-type]
            end = EventKind.FAILED if n % 5 == 0 else EventKind.SUCCEEDED
            tally(Event(end, handle))  # type: ignore[arg-type]

    threads = [threading.Thread(target=feed, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then every event is counted once and nothing is left "retrying"
    assert tally.counts() == Counts(succeeded=3200, failed=800, retrying=0, retries=4000)


def test_tally_shows_tasks_between_attempts_as_retrying() -> None:
    tally, first, second = Tally(), object(), object()
    tally(Event(EventKind.RETRYING, first))  # type: ignore[arg-type]
    tally(Event(EventKind.RETRYING, first))  # type: ignore[arg-type]
    tally(Event(EventKind.RETRYING, second))  # type: ignore[arg-type]
    tally(Event(EventKind.SUCCEEDED, second))  # type: ignore[arg-type]

    assert tally.counts() == Counts(succeeded=1, failed=0, retrying=1, retries=3)
    assert tally.counts().done == 1


def test_progress_line_shows_done_retrying_failed_and_rate() -> None:
    line = progress_line(Counts(succeeded=90, failed=10, retrying=4, retries=30), 200, 2.0)
    assert line == "done 100/200 | retrying 4 | failed 10 | 50.0/s"
    assert progress_line(Counts(0, 0, 0, 0), 5, 0.0).endswith("| 0.0/s")


def test_plain_display_prints_a_line_about_once_a_second() -> None:
    out, clock = io.StringIO(), FakeClock()
    display = ProgressDisplay(out, False, 10, Tally(), clock=clock)

    display.tick()  # the first tick always shows
    clock.advance(0.5)
    display.tick()  # too soon
    clock.advance(0.5)
    display.tick()
    display.finish()

    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert all(line.startswith("done 0/10 |") for line in lines)
    assert "\r" not in out.getvalue()


def test_terminal_display_rewrites_one_line_and_ends_it() -> None:
    out, clock, tally = io.StringIO(), FakeClock(), Tally()
    display = ProgressDisplay(out, True, 10, tally, clock=clock)

    tally(Event(EventKind.RETRYING, object()))  # type: ignore[arg-type]
    display.tick()
    tally(Event(EventKind.RETRYING, object()))  # type: ignore[arg-type]
    clock.advance(0.2)
    display.tick()
    display.finish()

    text = out.getvalue()
    assert text.count("\r") == 3
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.split("\r")[-1].startswith("done 0/10 | retrying 2 |")


def test_terminal_display_pads_over_a_longer_previous_line() -> None:
    out, clock, tally = io.StringIO(), FakeClock(), Tally()
    display = ProgressDisplay(out, True, 10, tally, clock=clock)
    handle = object()
    tally(Event(EventKind.RETRYING, handle))  # type: ignore[arg-type]
    for _ in range(9):
        tally(Event(EventKind.RETRYING, object()))  # type: ignore[arg-type]
    display.tick()  # "retrying 10": one character longer than what follows
    tally(Event(EventKind.SUCCEEDED, handle))  # type: ignore[arg-type]
    clock.advance(1.0)
    display.tick()

    first, second = out.getvalue().split("\r")[1:]
    assert len(second) == len(first)
    assert second.endswith(" ")


# -- whole runs ------------------------------------------------------------------------

def test_simulate_ends_every_booking_and_dead_letters_exactly_the_predicted_ones() -> None:
    # Given a seed whose replay predicts two dead letters
    expected_dead, expected_retries = replay(0.5, seed=1, bookings=20)
    assert expected_dead  # the test means something only if some bookings fail

    # When the demo runs the same bookings through a real queue
    result = simulate(20, 4, 0.5, 1, out=io.StringIO(), tty=False)

    # Then the queue retried exactly as the policy says, and the numbers add up
    stats = result.stats
    assert stats.submitted == 20
    assert stats.succeeded + stats.failed == 20
    assert stats.failed == stats.dead_letters == len(expected_dead)
    assert stats.retried == expected_retries
    assert sorted(letter.task.args[0] for letter in result.dead_letters) == expected_dead
    assert all(letter.attempts == RETRIES + 1 for letter in result.dead_letters)
    assert all(isinstance(letter.exception, MailServerError) for letter in result.dead_letters)


def test_failure_rate_1_dead_letters_every_booking() -> None:
    result = simulate(12, 4, 1.0, 5, out=io.StringIO(), tty=False)
    assert result.stats.succeeded == 0
    assert sorted(letter.task.args[0] for letter in result.dead_letters) == list(range(1, 13))


def test_failure_rate_0_leaves_no_dead_letters() -> None:
    result = simulate(12, 4, 0.0, 5, out=io.StringIO(), tty=False)
    assert result.stats.succeeded == 12
    assert result.stats.retried == 0
    assert result.dead_letters == []


def test_simulate_refuses_zero_bookings() -> None:
    with pytest.raises(ValueError, match="bookings"):
        simulate(0, 2, 0.1, 1, out=io.StringIO(), tty=False)


def test_run_demo_output_has_header_progress_stats_and_dead_letters() -> None:
    out = io.StringIO()

    status = run_demo(15, 3, 1.0, seed=42, out=out, tty=False)

    text = out.getvalue()
    assert status == 0
    assert "\r" not in text
    assert text.startswith("Sending 15 booking confirmations: 3 workers, failure rate 1, seed 42\n")
    assert "done 15/15 | retrying 0 | failed 15 |" in text
    assert "\nStats\n" in text
    assert "\nDead letters: 15\n" in text
    assert "  booking 1: 4 attempts, MailServerError: " in text
    assert "  ... and 10 more\n" in text  # five listed, the rest counted


def test_report_of_a_run_on_worker_processes_lists_them_and_what_failed_there() -> None:
    # Given a run's result as the demo on Redis makes it: worker processes,
    # and a dead letter whose error came back from one as a TaskFailed
    result = simulate(1, 1, 1.0, 5, out=io.StringIO(), tty=False)
    remote = TaskFailed("taskqueue.demo.MailServerError", "mail server did not accept the "
                        "message (booking 1, attempt 4) in worker process 12")
    local = result.dead_letters[0]
    letter = DeadLetter(local.task, local.task_id, remote, "", local.attempts,
                        local.submitted_at, local.failed_at)
    result = dataclasses.replace(result, dead_letters=[letter],
                                 processes=(WorkerProcess(11, 0, 0), WorkerProcess(12, 0, -9)))
    out = io.StringIO()

    report(result, out)

    # Then the workers are listed, timings this process did not take are not
    text = out.getvalue()
    assert ("\nWorker processes\n  pid 11: 0 sent, exit status 0\n"
            "  pid 12: 0 sent, exit status -9\n") in text
    assert "p50" not in text and "attempts/s (whole run)" in text
    # ... and the dead letter reads as it would have in one process
    assert ("  booking 1: 4 attempts, MailServerError: mail server did not accept the message "
            "(booking 1, attempt 4) in worker process 12\n") in text


def test_run_demo_refuses_a_journal_and_a_broker() -> None:
    with pytest.raises(ValueError, match="journal or broker"):
        run_demo(5, 2, 0.1, seed=1, out=io.StringIO(), journal="x.journal",
                 broker="redis://127.0.0.1:6379/0")


def test_run_demo_on_a_terminal_rewrites_the_progress_line() -> None:
    out = io.StringIO()
    run_demo(5, 2, 0.0, seed=1, out=out, tty=True)
    assert "\rdone 5/5 | retrying 0 | failed 0 |" in out.getvalue()


class InterruptingStream(io.StringIO):
    """An output stream that raises KeyboardInterrupt at the first progress line,
    as Ctrl-C would while the display is up."""

    def write(self, text: str) -> int:
        if "done " in text:
            raise KeyboardInterrupt
        return super().write(text)


def test_interrupt_cancels_the_queue_and_stops_its_workers() -> None:
    with pytest.raises(KeyboardInterrupt):
        run_demo(200, 4, 0.2, seed=1, out=InterruptingStream(), tty=False)

    # shutdown(cancel_futures=True) waited for the workers: none is left
    alive = [t.name for t in threading.enumerate() if t.name.startswith("booking-demo-worker")]
    assert alive == []
