"""``python -m benchmarks``: run the suite, print the table, write JSON and charts.

Exit codes: 0 when every scenario ran (whether or not its targets were
met: speed is reported, never enforced), 1 when a scenario failed with an
error or hung, 2 for bad options (one line on stderr, no traceback), 130
when interrupted.

A scenario still running after :data:`WATCHDOG` seconds is taken for a
hang (a lost wake-up in a pool never finishes): the stack of every thread
is dumped to stderr and the process exits with 1, so that CI shows where
it hung instead of waiting for its own time limit.
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import json
import os
import sys
import traceback
from contextlib import contextmanager
from typing import Iterator, List, NoReturn, Optional, Sequence

from . import plot, report
from . import scenarios as _scenarios  # noqa: F401  (registers every scenario)
from .harness import Metric, Result, not_measured
from .progress import Progress
from .registry import SCENARIOS, Context

__all__ = ["main", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

ROUNDS = {"full": 5, "quick": 5, "smoke": 2}
"""Rounds kept per figure in each mode; the issue asks for at least 5 in a real run."""
WARMUP = {"full": 1, "quick": 0, "smoke": 0}
"""Warm-up rounds thrown away first (a scenario may skip them where they buy nothing)."""
WATCHDOG = {"full": 900, "quick": 300, "smoke": 120}
"""Seconds one scenario may run before it is taken for a hang (several times its usual time)."""


class UsageError(Exception):
    """Raised for a bad option; main() turns it into one line and exit code 2."""


class _Exit(Exception):
    # argparse exits by itself after --help; main() returns the status instead.
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that reports errors to main() instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)

    def exit(self, status: int = 0, message: Optional[str] = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise _Exit(status)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m benchmarks``."""
    parser = _Parser(
        prog="python -m benchmarks",
        description="Benchmark taskqueue against ThreadPoolExecutor, a bare queue loop "
                    "and its peers; print one table of ratios measured in this run.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="smaller sizes: everything in well under a minute")
    size.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                      help="tiny sizes, for CI: checks that every scenario runs, not speed")
    parser.add_argument("--only", action="append", metavar="NAME", default=[],
                        help="run only this scenario (repeatable); see --list")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--rounds", type=int, metavar="N",
                        help="rounds per figure (default: 5, or 2 with --smoke)")
    parser.add_argument("--warmup", type=int, metavar="N",
                        help="warm-up rounds thrown away first (default: 1 in a full run, else 0)")
    parser.add_argument("--json", metavar="FILE", help="write machine-readable results to FILE")
    parser.add_argument("--markdown", metavar="FILE",
                        help="write the table as a Markdown 'Performance' section to FILE")
    parser.add_argument("--plot", metavar="DIR",
                        help="write PNG charts of the scaling and latency scenarios to DIR "
                             "(needs matplotlib: pip install '.[bench]')")
    parser.set_defaults(mode="full")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmarks as the command line asks; return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        options = build_parser().parse_args(args)
        _check(options)
    except UsageError as exc:
        sys.stderr.write(f"python -m benchmarks: error: {exc}\n")
        return EXIT_USAGE
    except plot.PlotUnavailable as exc:
        sys.stderr.write(f"python -m benchmarks: {exc}\n")
        return EXIT_USAGE
    except _Exit as done:
        return done.status
    if options.list:
        return _list()
    return _run(options, args)


def _check(options: argparse.Namespace) -> None:
    # Everything that can be wrong with the options is found before a
    # minute is spent measuring.
    unknown = [name for name in options.only if name not in SCENARIOS]
    if unknown:
        raise UsageError(f"unknown scenario {unknown[0]!r} (choose from {', '.join(SCENARIOS)})")
    if options.rounds is not None and options.rounds < 1:
        raise UsageError(f"--rounds must be >= 1, got {options.rounds}")
    if options.warmup is not None and options.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {options.warmup}")
    for flag in ("json", "markdown"):
        path = getattr(options, flag)
        if path is not None:
            _check_writable(f"--{flag}", path)
    if options.plot is not None:
        if os.path.exists(options.plot) and not os.path.isdir(options.plot):
            raise UsageError(f"--plot needs a directory, {options.plot!r} is a file")
        plot.require()


def _check_writable(flag: str, path: str) -> None:
    if os.path.isdir(path):
        raise UsageError(f"{flag} needs a file, {path!r} is a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{flag}: directory {parent!r} does not exist")


def _list() -> int:
    width = max(len(name) for name in SCENARIOS)
    for spec in SCENARIOS.values():
        sys.stdout.write(f"{spec.name.ljust(width)}  {spec.title}\n")
    return EXIT_OK


def _run(options: argparse.Namespace, args: List[str]) -> int:
    mode = options.mode
    rounds = options.rounds if options.rounds is not None else ROUNDS[mode]
    warmup = options.warmup if options.warmup is not None else WARMUP[mode]
    names = [name for name in SCENARIOS if not options.only or name in options.only]
    meta = report.machine(mode=mode, command=report.command_line(args), rounds=rounds,
                          warmup=warmup)
    progress = Progress(sys.stderr, total=len(names))
    results: List[Result] = []
    failed = 0
    try:
        for name in names:
            progress.scenario(name)
            rows = _run_one(name, mode, rounds, warmup, progress)
            failed += any(row.metric == _FAILED.label for row in rows)
            results.extend(rows)
    except KeyboardInterrupt:
        progress.done()
        sys.stderr.write("python -m benchmarks: interrupted\n")
        return EXIT_INTERRUPTED
    progress.done()
    meta["load_average"]["end"] = report.load_average()
    sys.stdout.write(report.render_table(results, meta))
    _write_outputs(options, results, meta)
    return EXIT_FAILED if failed else EXIT_OK


_FAILED = Metric("-", "did not finish", "", higher_is_better=True)


def _run_one(name: str, mode: str, rounds: int, warmup: int, progress: Progress) -> List[Result]:
    spec = SCENARIOS[name]
    context = Context(spec, mode, rounds=rounds, warmup=warmup, progress=progress)
    try:
        with _watchdog(WATCHDOG[mode]):
            return spec.run(context)
    except Exception as exc:  # one broken scenario must not cost the others' figures
        progress.done()
        sys.stderr.write(f"scenario {name!r} failed:\n{traceback.format_exc()}")
        return [not_measured(None, scenario=name, metric=_FAILED, subject="taskqueue",
                             baseline="-", note=f"{name}: error: {type(exc).__name__}: {exc}",
                             sizes=context.sizes)]


@contextmanager
def _watchdog(seconds: float) -> Iterator[None]:
    try:
        faulthandler.dump_traceback_later(seconds, exit=True, file=sys.stderr)
    except (AttributeError, ValueError, io.UnsupportedOperation):
        # stderr is no real file (main() called under a capturing test
        # runner): run without a watchdog rather than not at all.
        yield
        return
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def _write_outputs(options: argparse.Namespace, results: List[Result], meta: dict) -> None:
    if options.json is not None:
        text = json.dumps(report.to_json(results, meta), indent=2) + "\n"
        report.write_text(options.json, text)
        _say(f"results written to {options.json}")
    if options.markdown is not None:
        report.write_text(options.markdown, report.render_markdown(results, meta))
        _say(f"Markdown written to {options.markdown}")
    if options.plot is not None:
        written = plot.write_charts(results, options.plot)
        _say("charts written: " + ", ".join(written) if written
             else "no charts: none of the scenarios run has a chart (io-scaling, latency, growth)")


def _say(text: str) -> None:
    if text:
        sys.stderr.write(text + "\n")

