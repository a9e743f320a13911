"""The command line: ``python -m taskqueue COMMAND [options]``.

Each command is two small functions: ``_add_<command>(commands)`` declares
its parser and points ``run`` at ``_run_<command>(args) -> int``. Adding a
command means writing those two and calling the first in
:func:`build_parser`.

Usage errors print one line, ``taskqueue: error: ...`` (or ``taskqueue
demo: error: ...``), to stderr and exit with :data:`EXIT_USAGE`; Ctrl-C
exits with :data:`EXIT_INTERRUPTED`. Neither prints a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator, List, Optional

from . import BrokerError, Journal, JournalError, JournalView, RedisBroker, TaskQueue
from .cli_shared import add_redis, add_worker
from .demo import BACKOFF, LATENCY, RETRIES, WORKER_PROCESSES, DemoError, run_demo

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_INTERRUPTED"]

EXIT_OK = 0
"""The command did what was asked."""
EXIT_FAILURE = 1
"""The command could not finish (its output pipe was closed)."""
EXIT_USAGE = 2
"""The command line was wrong; nothing was run."""
EXIT_INTERRUPTED = 130
"""Stopped by Ctrl-C (128 + SIGINT, as shells report it)."""

PROG = "taskqueue"
MAX_WORKERS = 256  # beyond this a demo only measures thread start-up, or fails to start them

LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 1,
}


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose usage errors are a single line.

    Stock argparse prints the whole usage before the message; here the
    message alone goes to stderr (``--help`` shows the usage), then the
    parser exits with :data:`EXIT_USAGE`.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print ``PROG: error: message`` to stderr and exit with EXIT_USAGE."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` if None.

    Returns:
        The exit status: EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED or EXIT_FAILURE.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.run is None:
            parser.error(f"a command is required ({', '.join(COMMANDS)}); "
                         f"see '{PROG} --help'")
    except SystemExit as stop:  # --help, or a usage error already reported
        return stop.code if isinstance(stop.code, int) else EXIT_USAGE
    try:
        if getattr(args, "own_logging", False):  # the command sets up its own
            return args.run(args)  # type: ignore[no-any-return]
        with _library_logging(LOG_LEVELS[getattr(args, "log_level", "critical")]):
            return args.run(args)  # type: ignore[no-any-return]
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_FAILURE


def build_parser() -> ArgumentParser:
    """Return the parser of the whole command line, one subparser per command."""
    parser = ArgumentParser(
        prog=PROG,
        description="taskqueue: background work on a bounded queue drained by "
                    "worker threads, with retries, backoff and dead letters.",
        epilog=f"Run '{PROG} COMMAND --help' for a command's options.",
    )
    parser.set_defaults(run=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add_command in COMMANDS.values():
        add_command(commands)
    return parser


# -- demo -------------------------------------------------------------------

DEMO_DESCRIPTION = f"""\
Simulate a booking service sending confirmation emails in the background.

Each booking submits one task, "send the confirmation email", to a fake mail
service that takes {LATENCY[0] * 1000:g}-{LATENCY[1] * 1000:g} ms a call and fails a set share of calls. A failed
send is retried up to {RETRIES} times with exponential backoff ({BACKOFF.base * 1000:g} ms doubling, at
most {BACKOFF.max:g} s, with jitter); a booking whose every attempt fails becomes a
dead letter.

While the queue drains, one progress line shows how many bookings are done,
how many are waiting to retry, how many failed for good, and bookings per
second. On a terminal the line is updated in place; otherwise (a pipe, a
file) a plain line is printed about once a second. At the end come the
queue's stats (counts, p50/p99 wait and run times in ms, rate) and a summary
of the dead letters.

The seed fixes which calls fail, so a run can be repeated: every run prints
its seed. Timings vary from run to run. The defaults finish in a few seconds.

With --broker redis://HOST:PORT/DB the tasks go through Redis: this process
only submits, to a namespace of its own, and {WORKER_PROCESSES} worker processes
(`{PROG} worker`, each with --workers threads and this --log-level) send the
emails. A seed gives the same outcomes as without --broker; the summary says
which process sent how many (wait and run times stay with the workers). At
the end, or on Ctrl-C or an error, the workers are stopped with SIGTERM and
the namespace's keys deleted. It needs redis-py: pip install 'taskqueue[redis]'.
"""


def _add_demo(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="simulate sending booking confirmations through a TaskQueue",
        description=DEMO_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--bookings", type=_whole_number(1), default=500, metavar="N",
                      help="how many bookings, one email each; at least 1 (default: %(default)s)")
    demo.add_argument("--workers", type=_whole_number(1, MAX_WORKERS), default=8, metavar="N",
                      help=f"worker threads, 1 to {MAX_WORKERS}; with --broker, in each worker "
                           "process (default: %(default)s)")
    demo.add_argument("--failure-rate", type=_share, default=0.2, metavar="RATE",
                      help="share of mail-service calls that fail, from 0 to 1 "
                           "(default: %(default)s)")
    demo.add_argument("--seed", type=_integer, default=None, metavar="N",
                      help="seed for the simulated failures and delays, to repeat a run "
                           "(default: a random seed, printed at the start)")
    demo.add_argument("--journal", default=None, metavar="PATH",
                      help="keep the queue's tasks in this journal file: kill the demo "
                           "(Ctrl-C, kill -9) and run it again with the same file to see "
                           "the unfinished emails sent")
    demo.add_argument("--broker", default=None, metavar="URL",
                      help=f"run the queue in this Redis (redis://HOST:PORT/DB), its workers in "
                           f"{WORKER_PROCESSES} child processes; not with --journal")
    _add_log_level(demo)
    demo.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    if args.broker is not None and args.journal is not None:
        return _demo_error("--broker and --journal do not go together: with --broker the "
                           "tasks are kept in Redis")
    try:
        return run_demo(args.bookings, args.workers, args.failure_rate, args.seed,
                        journal=args.journal, broker=args.broker,
                        worker_log_level=args.log_level)
    except (JournalError, DemoError, BrokerError) as exc:
        return _demo_error(str(exc))


def _demo_error(message: str) -> int:
    print(f"{PROG} demo: error: {_single_line(message)}", file=sys.stderr)
    return EXIT_USAGE


# -- journal ----------------------------------------------------------------

JOURNAL_DESCRIPTION = """\
Look into a taskqueue journal file (TaskQueue(journal=PATH)), and act on its
dead letters. Looking (a summary, --dead) only reads the file, never changes
it, and works while its program runs.

Without an action, print how many tasks are pending, scheduled (a delay or a
retry), running when the program stopped (they run again on its next start)
and dead. --dead lists the dead letters with their errors.

requeue-dead turns dead letters (only --name's, if given) back into pending
tasks, their attempts counted from zero: they run on the program's next
start. purge-dead deletes every dead letter. Both change the file, so they
need it to themselves (its program must not be running); on a terminal they
ask for --yes.

A missing, locked (for a change, the program is running) or invalid file
is an error (exit status 2).
"""

REQUEUE, PURGE = "requeue-dead", "purge-dead"


def _add_journal(commands: argparse._SubParsersAction) -> None:
    journal = commands.add_parser(
        "journal",
        help="summarise a journal file, list, requeue or purge its dead letters",
        description=JOURNAL_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    journal.add_argument("path", metavar="PATH", help="the journal file")
    journal.add_argument("action", nargs="?", choices=[REQUEUE, PURGE], default=None,
                         metavar="ACTION", help=f"{REQUEUE} or {PURGE} (default: a summary)")
    journal.add_argument("--dead", action="store_true",
                         help="list the dead letters with their errors")
    journal.add_argument("--damaged", action="store_true",
                         help="list the rows that hold values taskqueue never writes (a file "
                              "with one is refused as corrupt until they are fixed or deleted)")
    journal.add_argument("--name", default=None, metavar="NAME",
                         help="only the dead letters of this task function (--dead, requeue-dead)")
    journal.add_argument("--yes", action="store_true",
                         help="confirm requeue-dead or purge-dead (needed on a terminal)")
    _add_log_level(journal)
    journal.set_defaults(run=_run_journal)


def _run_journal(args: argparse.Namespace) -> int:
    prog = f"{PROG} journal"
    if args.action is not None and (args.dead or args.damaged):
        return _journal_error(prog, f"--dead and --damaged list rows; they do not go with "
                                    f"{args.action}")
    if args.dead and args.damaged:
        return _journal_error(prog, "give --dead or --damaged, not both")
    if args.name is not None and args.action == PURGE:
        return _journal_error(prog, "--name does not go with purge-dead, which purges them all")
    if args.action is not None and not args.yes and _is_terminal(sys.stdout):
        return _journal_error(prog, f"{args.action} changes {args.path}; pass --yes to confirm")
    try:
        if args.action is None:
            _inspect_journal(args)
        else:
            _change_journal(args)
    except JournalError as exc:
        return _journal_error(prog, str(exc))
    return EXIT_OK


def _inspect_journal(args: argparse.Namespace) -> None:
    # Read-only: the file is never changed, and its program may be running.
    with JournalView(args.path) as view:
        if args.dead:
            _print_dead(view, args.name)
        elif args.damaged:
            _print_damaged(view)
        else:
            _print_summary(view)


def _change_journal(args: argparse.Namespace) -> None:
    # Changes need the file to itself: JournalLocked while its program runs.
    if not os.path.isfile(args.path):
        raise JournalError(f"{args.path}: no such journal file")
    journal = Journal(args.path)
    try:
        if args.action == REQUEUE:
            count = journal.requeue_dead(args.name)
            print(f"requeued {count} dead letter(s) in {args.path}; "
                  "they run when the program starts again")
        else:
            print(f"purged {journal.purge_dead()} dead letter(s) from {args.path}")
    finally:
        journal.close()


def _print_summary(view: JournalView) -> None:
    counts = view.counts()
    owners = view.overview(limit=0).processes  # its program, if it runs now
    print(f"journal {view.path}")
    for label, state in [("pending", "pending"), ("scheduled", "scheduled"),
                         ("running" if owners else "running-at-crash", "running"),
                         ("dead", "dead")]:
        print(f"  {label:<17} {counts[state]}")
    for owner in owners:
        print(f"  {'owner':<17} {owner.name}, {owner.workers} worker(s), running now")
    damaged = sum(1 for row in view.rows() if row.damage is not None)
    if damaged:
        print(f"  {'damaged':<17} {damaged}  (see --damaged; the file is refused until "
              "they are fixed)")


def _print_damaged(view: JournalView) -> None:
    rows = [row for row in view.rows() if row.damage is not None]
    print(f"{len(rows)} damaged row(s) in {view.path}")
    for row in rows:
        print(f"  {row.id}  {row.name}  {_single_line(row.damage)}")


def _print_dead(view: JournalView, name: Optional[str]) -> None:
    letters = view.dead(name)
    print(f"{len(letters)} dead letter(s) in {view.path}")
    for row in letters:
        print(f"  {row.id}  {row.name}  {row.attempts} attempt(s)  failed {_when(row.failed_at)}")
        print(f"    {_single_line(row.error)}")
        if row.damage is not None:
            print(f"    (damaged row: {_single_line(row.damage)})")


def _when(epoch: Optional[float]) -> str:
    if epoch is None:
        return "?"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
    except (OverflowError, OSError, ValueError):  # not a time this platform can show
        return "?"


def _single_line(text: object) -> str:
    return " ".join(str(text).split())


def _journal_error(prog: str, message: str) -> int:
    # One line, whatever the message holds (SQLite's reports can span many).
    print(f"{prog}: error: {_single_line(message)}", file=sys.stderr)
    return EXIT_USAGE


def _is_terminal(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False



# -- dashboard --------------------------------------------------------------

DASHBOARD_DESCRIPTION = """\
Serve a live dashboard of a queue over HTTP until Ctrl-C or SIGTERM: its
totals and rates, a chart of the last ten minutes, what waits and runs, the
workers, and the dead letters with their tracebacks. Open the URL it prints.

--journal PATH shows the journal file of a running program, read-only (only
the program changes its file). --broker URL shows a queue in Redis (its
--namespace); with a token, the page can also requeue and purge dead
letters and cancel tasks that have not started.

It binds 127.0.0.1 unless --host says otherwise, and any address that is
not loopback needs a token. Without a token the dashboard is read-only. The
token may come from the environment instead (TASKQUEUE_DASHBOARD_TOKEN), so
that it does not show in ps.

A missing or invalid journal, an unreachable server, a bad URL, a port in
use or a public address without a token is an error (exit status 2).
"""

TOKEN_VARIABLE = "TASKQUEUE_DASHBOARD_TOKEN"
"""Where ``dashboard`` finds its token when --token is not given."""


def _add_dashboard(commands: argparse._SubParsersAction) -> None:
    dashboard = commands.add_parser(
        "dashboard", help="serve a live dashboard of a journal file or a queue in Redis",
        description=DASHBOARD_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = dashboard.add_mutually_exclusive_group(required=True)
    where.add_argument("--journal", default=None, metavar="PATH",
                       help="the journal file of a running program (read-only)")
    where.add_argument("--broker", default=None, metavar="URL",
                       help="a queue in Redis, e.g. redis://127.0.0.1:6379/0")
    dashboard.add_argument("--namespace", default=None, metavar="NS",
                           help="with --broker: the queue's namespace in Redis "
                                "(default: taskqueue)")
    dashboard.add_argument("--host", default="127.0.0.1", metavar="HOST",
                           help="the address to listen on; one that is not loopback needs "
                                "--token, for reads too (default: %(default)s)")
    dashboard.add_argument("--port", type=_whole_number(0, 65535), default=8000, metavar="PORT",
                           help="the port; 0 picks a free one (default: %(default)s)")
    dashboard.add_argument("--token", default=None, metavar="TOKEN",
                           help="the secret the page asks for before it acts (default: "
                                f"${TOKEN_VARIABLE}; none: read-only)")
    _add_log_level(dashboard)
    dashboard.set_defaults(run=_run_dashboard)


def _run_dashboard(args: argparse.Namespace) -> int:
    from .dashboard import JournalSource, QueueSource, serve  # http.server only when asked for

    prog = f"{PROG} dashboard"
    if args.namespace is not None and args.journal is not None:
        return _journal_error(prog, "--namespace goes with --broker, not with --journal")
    token = args.token if args.token is not None else (os.environ.get(TOKEN_VARIABLE) or None)
    with contextlib.ExitStack() as stack:  # closed in reverse: the server, then its source
        try:
            source: Any
            if args.journal is not None:
                source = stack.enter_context(contextlib.closing(JournalSource(args.journal)))
            else:
                namespace = args.namespace or "taskqueue"
                queue = TaskQueue(broker=RedisBroker(args.broker, namespace=namespace),
                                  workers=0, name=namespace)
                stack.callback(queue.shutdown)
                queue.stats()  # one round trip: a server out of reach is a wrong command line
                source = QueueSource(queue)
            dashboard = stack.enter_context(serve(source, host=args.host, port=args.port,
                                                  token=token))
        except OSError as exc:
            return _journal_error(prog, f"cannot listen on {args.host}:{args.port}: "
                                        f"{exc.strerror or exc}")
        except (JournalError, BrokerError, ImportError, ValueError, TypeError) as exc:
            return _journal_error(prog, str(exc))
        mode = "actions need the token" if token is not None and source.can_act else "read-only"
        with _stop_signals() as stop:  # before the line: whoever reads it may stop us at once
            print(f"{prog} for {source.name} at {dashboard.url} ({mode})", flush=True)
            while not stop.wait(0.5):  # short waits: a handler runs between them
                pass
    return EXIT_OK


@contextlib.contextmanager
def _stop_signals() -> Iterator[threading.Event]:
    # Ctrl-C and SIGTERM both end a dashboard normally (exit 0): they set the event.
    stop = threading.Event()

    def handle(number: int, frame: Any) -> None:
        stop.set()

    previous = {number: signal.signal(number, handle) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _add_worker(commands: argparse._SubParsersAction) -> None:
    add_worker(commands, LOG_LEVELS, _library_logging)


COMMANDS = {
    "demo": _add_demo,
    "journal": _add_journal,
    "worker": _add_worker,
    "redis": add_redis,
    "dashboard": _add_dashboard,
}
"""Each command's name and the function that adds its parser."""


# -- shared by every command -----------------------------------------------------

def _add_log_level(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--log-level", type=str.lower, choices=list(LOG_LEVELS), default="critical",
        metavar="LEVEL",
        help="which of taskqueue's log records to print to stderr: "
             f"{', '.join(LOG_LEVELS)}. Retries are logged at info, tasks that "
             "fail for good at error (with a traceback). The default, critical, "
             "shows only a crashed worker thread and keeps the progress line readable")


@contextlib.contextmanager
def _library_logging(level: int, *, timed: bool = False) -> Iterator[None]:
    # Only for the length of the command, so that calling main() in-process
    # (as tests do) leaves no handler behind pointing at a stale stderr.
    logger = logging.getLogger("taskqueue")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        ("%(asctime)s " if timed else "") + "%(levelname)s %(name)s: %(message)s"))
    old_level = logger.level
    logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _silence_stdout() -> None:
    # The reader of our output went away (`... | head`). Point stdout at
    # devnull so the interpreter's final flush does not fail a second time,
    # as the Python docs recommend for SIGPIPE.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (in-process use)
        pass


# -- argument types: each raises ArgumentTypeError, which argparse reports in one line

def _whole_number(minimum: int, maximum: Optional[int] = None) -> Callable[[str], int]:
    bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number {bounds}, "
                                             f"got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text!r}")
    return value
