"""Tests of the command line: help, usage errors, the demo command, exit codes."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from taskqueue.cli import EXIT_INTERRUPTED, EXIT_USAGE, main

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = ["--bookings", "--workers", "--failure-rate", "--seed", "--log-level"]


def stat(output: str, name: str) -> int:
    """Return the number on the ``name`` line of the demo's Stats section."""
    match = re.search(rf"^  {name} +(\d+)$", output, re.MULTILINE)
    assert match, f"no {name!r} line in:\n{output}"
    return int(match.group(1))


def dead_letters(output: str) -> int:
    match = re.search(r"^Dead letters: (\d+)", output, re.MULTILINE)
    assert match, f"no dead-letter section in:\n{output}"
    return int(match.group(1))


def outcome(output: str) -> List[str]:
    """The lines that depend on the seed only (not on timing)."""
    counts = [line for line in output.splitlines()
              if re.match(r"  (submitted|succeeded|failed|cancelled|retried) ", line)]
    return counts + output.split("Dead letters:", 1)[1].splitlines()


# -- help and usage errors --------------------------------------------------------------

def test_help_lists_the_demo_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out


def test_demo_help_explains_the_demo_and_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--help"]) == 0
    text = capsys.readouterr().out
    assert "booking" in text and "dead letter" in text
    for option in OPTIONS:
        assert option in text


@pytest.mark.parametrize("argv, mentions", [
    (["demo", "--workers", "0"], "--workers"),
    (["demo", "--workers", "100000"], "--workers"),
    (["demo", "--failure-rate", "1.5"], "--failure-rate"),
    (["demo", "--failure-rate", "nan"], "--failure-rate"),
    (["demo", "--failure-rate", "-0.1"], "--failure-rate"),
    (["demo", "--bookings", "-1"], "--bookings"),
    (["demo", "--bookings", "0"], "--bookings"),
    (["demo", "--bookings", "abc"], "--bookings"),
    (["demo", "--seed", "x"], "--seed"),
    (["demo", "--log-level", "loud"], "--log-level"),
    (["demo", "--frobnicate"], "--frobnicate"),
    (["frobnicate"], "frobnicate"),
    ([], "command"),
])
def test_bad_command_line_gives_one_line_and_exit_2(
        argv: List[str], mentions: str, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(argv)

    out, err = capsys.readouterr()
    assert status == EXIT_USAGE == 2
    assert out == ""
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("taskqueue")
    assert ": error: " in err and mentions in err
    assert "Traceback" not in err


# -- the demo command ----------------------------------------------------------------

def test_small_demo_prints_stats_that_add_up_and_dead_letters(
        capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["demo", "--bookings", "30", "--workers", "4",
                   "--failure-rate", "0.3", "--seed", "11"])

    out, err = capsys.readouterr()
    assert status == 0
    assert err == ""  # the default log level keeps retries and failures off stderr
    assert "seed 11" in out
    assert stat(out, "submitted") == 30
    assert stat(out, "succeeded") + stat(out, "failed") == 30
    assert stat(out, "cancelled") == 0
    assert dead_letters(out) == stat(out, "failed")
    assert re.search(r"^  wait p50/p99 +[\d.]+ / [\d.]+ ms$", out, re.MULTILINE)
    assert re.search(r"^  run p50/p99 +[\d.]+ / [\d.]+ ms$", out, re.MULTILINE)
    assert "\r" not in out  # captured output is not a terminal: plain lines


def test_failure_rate_1_dead_letters_every_booking(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--bookings", "10", "--failure-rate", "1", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert stat(out, "succeeded") == 0
    assert dead_letters(out) == 10


def test_failure_rate_0_leaves_no_dead_letters(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--bookings", "10", "--failure-rate", "0", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert stat(out, "succeeded") == 10
    assert dead_letters(out) == 0


def test_printed_seed_repeats_a_run(capsys: pytest.CaptureFixture[str]) -> None:
    # Given a run with a random seed
    assert main(["demo", "--bookings", "25", "--failure-rate", "0.6"]) == 0
    first = capsys.readouterr().out
    seed = re.search(r"seed (-?\d+)", first).group(1)  # type: ignore[union-attr]

    # When it is run again with the seed it printed
    assert main(["demo", "--bookings", "25", "--failure-rate", "0.6", "--seed", seed]) == 0
    again = capsys.readouterr().out

    # Then the outcomes are the same (timings may differ)
    assert outcome(again) == outcome(first)


def test_log_level_info_shows_the_librarys_retries_on_stderr(
        capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("taskqueue")
    handlers, level = list(logger.handlers), logger.level

    assert main(["demo", "--bookings", "3", "--failure-rate", "1", "--seed", "1",
                 "--log-level", "INFO"]) == 0  # spelt as logging spells it, too

    err = capsys.readouterr().err
    assert "INFO taskqueue.settle: task " in err and "retrying in" in err
    assert "ERROR taskqueue.settle: task " in err and "Traceback" in err  # final failures
    assert (logger.handlers, logger.level) == (handlers, level)  # nothing left behind


class InterruptingStdout(io.StringIO):
    """Raises KeyboardInterrupt at the first progress line, as Ctrl-C would."""

    def write(self, text: str) -> int:
        if "done " in text:
            raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_exits_130_with_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdout", InterruptingStdout())

    status = main(["demo", "--bookings", "100", "--seed", "1"])

    err = capsys.readouterr().err
    assert status == EXIT_INTERRUPTED == 130
    assert err == "taskqueue: interrupted\n"


# -- as a program -------------------------------------------------------------------------

def run_module(*args: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return subprocess.run([sys.executable, "-m", "taskqueue", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=50)


def test_python_m_taskqueue_demo_runs() -> None:
    done = run_module("demo", "--bookings", "20", "--seed", "1")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert stat(done.stdout, "submitted") == 20
    assert "Dead letters: " in done.stdout


def test_python_m_taskqueue_bad_option_exits_2() -> None:
    done = run_module("demo", "--workers", "0")
    assert done.returncode == 2
    assert done.stderr == "taskqueue demo: error: argument --workers: must be from 1 to 256, got 0\n"
