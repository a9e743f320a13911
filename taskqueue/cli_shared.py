"""The command line's shared-broker commands: ``worker`` and ``redis``.

``python -m taskqueue worker MODULE:ATTR`` imports a program's tasks module,
finds its TaskQueue and runs that queue's workers until it is signalled;
``python -m taskqueue redis URL`` looks into a Redis queue and acts on its
dead letters, as ``journal PATH`` does for a journal file. Both use only
the package's public names; :mod:`taskqueue.cli` adds them to its parser.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, Optional

from . import BrokerError, QueueClosed, RedisBroker, TaskFailed, TaskQueue

__all__ = ["add_worker", "add_redis"]

log = logging.getLogger("taskqueue.worker")

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130


class UsageError(Exception):
    """A command line that cannot run; its message is the one line printed."""


# -- worker -------------------------------------------------------------------------

WORKER_DESCRIPTION = """\
Run the workers of a TaskQueue on a shared broker (Redis), in this process,
until signalled.

MODULE:ATTR names the queue: the module is imported (from the current folder
too, as python -m would), and ATTR is the TaskQueue in it, or a function that
returns one. Its task functions must be registered at import (@queue.task),
for the workers find them by name.

SIGTERM or Ctrl-C stops it gracefully: it takes no new task, lets the running
ones finish (at most --grace seconds, then hands them back to the queue at
once for another worker), and exits 0. A second signal stops it at once.

A server that cannot be reached at the start (or refuses the password) is an
error (exit status 2); once running, the workers ride out an outage.
"""


def add_worker(commands: argparse._SubParsersAction, log_levels: Dict[str, int],
               library_logging: Callable[..., Any]) -> None:
    """Add the ``worker`` command to ``commands``."""
    worker = commands.add_parser(
        "worker", help="run the workers of a queue on a shared broker (Redis)",
        description=WORKER_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    worker.add_argument("target", metavar="MODULE:ATTR", help="where the TaskQueue is")
    worker.add_argument("--workers", type=_whole_number(1), default=None, metavar="N",
                        help="worker threads (default: the queue's workers)")
    worker.add_argument("--grace", type=_seconds, default=30.0, metavar="S",
                        help="seconds running tasks get to finish on a stop (default: 30)")
    worker.add_argument("--log-level", type=str.lower, choices=list(log_levels), default="info",
                        metavar="LEVEL",
                        help=f"which of taskqueue's log records to print: {', '.join(log_levels)} "
                             "(default: info)")

    def run(args: argparse.Namespace) -> int:
        with library_logging(log_levels[args.log_level], timed=True):
            return _run_worker(args)

    worker.set_defaults(run=run, own_logging=True)


def _run_worker(args: argparse.Namespace) -> int:
    try:
        queue = load_queue(args.target)
        # One round trip before any thread starts: a server that cannot be
        # reached (or refuses the password) at start is a wrong command line,
        # not an outage to ride out, with or without --workers.
        configured = queue.stats().workers
    except (UsageError, BrokerError) as exc:
        return _usage("worker", str(exc))
    workers = args.workers or configured
    if workers < 1:
        return _usage("worker", f"{args.target} has workers=0 (it only submits); "
                                "pass --workers N")
    stop = _Signals()
    try:
        queue.start(workers=workers)
    except (BrokerError, QueueClosed, ValueError) as exc:
        return _usage("worker", str(exc))
    broker = queue.broker
    where = f"{broker.url} namespace {broker.namespace}" if isinstance(broker, RedisBroker) \
        else type(broker).__name__
    log.info("worker: queue %s on %s, %d worker(s), tasks: %s", queue.name, where, workers,
             ", ".join(sorted(queue.tasks)) or "(none registered)")
    stop.wait()
    log.info("worker: stopping; running tasks get %gs to finish", args.grace)
    # Not cancel_futures: what waits in Redis (a periodic run this process
    # submitted, say) is the other workers' to run.
    queue.shutdown(timeout=args.grace)
    handed = broker.hand_back_running() if isinstance(broker, RedisBroker) else 0
    if handed:
        log.warning("worker: %d task(s) still running after %gs were handed back", handed,
                    args.grace)
    log.info("worker: stopped")
    if handed:
        # Their threads still run user code, but the tasks are another
        # worker's now: exit without the interpreter's wait for them.
        logging.shutdown()
        sys.stdout.flush()
        os._exit(EXIT_OK)
    return EXIT_OK


def load_queue(target: str) -> TaskQueue:
    """The TaskQueue that ``MODULE:ATTR`` names, on a shared broker.

    Raises:
        UsageError: the module cannot be imported, has no such attribute,
            or it is not a queue on a shared broker (one line says which).
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"expected MODULE:ATTR (e.g. myapp.tasks:queue), got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    # Whatever the module raises on import, sys.exit() included: one line.
    except (Exception, SystemExit) as exc:
        raise UsageError(f"cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    try:
        found = getattr(module, attr)
    except AttributeError:
        raise UsageError(f"{module_name} has no attribute {attr!r}") from None
    if callable(found) and not isinstance(found, TaskQueue):
        try:
            found = found()
        except Exception as exc:
            raise UsageError(f"{target}() raised {type(exc).__name__}: {exc}") from None
    if not isinstance(found, TaskQueue):
        raise UsageError(f"{target} is not a TaskQueue (it is {type(found).__name__})")
    if not found.broker.shared:
        raise UsageError(f"{target} is on a local broker ({type(found.broker).__name__}): its "
                         "tasks live in the process that submits them; the worker command "
                         "runs queues on a shared broker, such as TaskQueue(broker='redis://...')")
    return found


class _Signals:
    """The first SIGTERM or SIGINT asks for a graceful stop; a second exits at once."""

    def __init__(self) -> None:
        self._event = threading.Event()
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._handle)

    def _handle(self, number: int, frame: Any) -> None:
        if self._event.is_set():
            os._exit(EXIT_INTERRUPTED)  # the second signal: at once
        self._event.set()

    def wait(self) -> None:
        # In short waits: a signal handler runs in the main thread between them.
        while not self._event.wait(0.2):
            pass


# -- redis ----------------------------------------------------------------------------

REDIS_DESCRIPTION = """\
Look into a taskqueue queue in Redis while its programs run, and act on its
dead letters: what `journal PATH` does for a journal file.

Without an action, print the tasks pending by priority, scheduled (a delay or
a retry), running with their leases, the dead letters and the workers heard
of lately. --dead lists the dead letters with their errors.

requeue-dead takes dead letters (only --name's, if given) in again as new
tasks; purge-dead deletes every dead letter. On a terminal both ask for --yes.

An unreachable server or a bad URL is an error (exit status 2).
"""

REQUEUE, PURGE = "requeue-dead", "purge-dead"


def add_redis(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``redis`` command to ``commands``; return its parser."""
    redis = commands.add_parser(
        "redis", help="look into a queue in Redis; list, requeue or purge its dead letters",
        description=REDIS_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    redis.add_argument("url", metavar="URL", help="the server, e.g. redis://127.0.0.1:6379/0")
    redis.add_argument("action", nargs="?", choices=[REQUEUE, PURGE], default=None,
                       metavar="ACTION", help=f"{REQUEUE} or {PURGE} (default: a summary)")
    redis.add_argument("--dead", action="store_true", help="list the dead letters")
    redis.add_argument("--name", default=None, metavar="NAME",
                       help="only the dead letters of this task (--dead, requeue-dead)")
    redis.add_argument("--yes", action="store_true", help="confirm requeue-dead or purge-dead")
    redis.add_argument("--namespace", default="taskqueue", metavar="NS",
                       help="the queue's namespace in Redis (default: taskqueue)")
    redis.set_defaults(run=_run_redis)
    return redis


def _run_redis(args: argparse.Namespace) -> int:
    if args.action is not None and args.dead:
        return _usage("redis", f"--dead lists dead letters; it does not go with {args.action}")
    if args.name is not None and args.action == PURGE:
        return _usage("redis", "--name does not go with purge-dead, which purges them all")
    if args.action is not None and not args.yes and _is_terminal(sys.stdout):
        return _usage("redis", f"{args.action} changes the queue; pass --yes to confirm")
    try:
        broker = RedisBroker(args.url, namespace=args.namespace, socket_timeout=5.0)
        try:
            _act(broker, args)
        finally:
            broker.shutdown()
    except (ImportError, ValueError, TypeError, BrokerError) as exc:
        return _usage("redis", str(exc))
    return EXIT_OK


def _act(broker: RedisBroker, args: argparse.Namespace) -> None:
    if args.action == REQUEUE:
        print(f"requeued {broker.requeue_dead(args.name)} dead letter(s) in {broker.url} "
              f"({broker.namespace})")
    elif args.action == PURGE:
        print(f"purged {broker.purge_dead()} dead letter(s) from {broker.url} ({broker.namespace})")
    elif args.dead:
        letters = [d for d in broker.dead_letters() if args.name in (None, d.task.name)]
        print(f"{len(letters)} dead letter(s) in {broker.url} ({broker.namespace})")
        for letter in letters:
            print(f"  {letter.task_id}  {letter.task.name}  {letter.attempts} attempt(s)  "
                  f"failed {_when(letter.failed_at)}")
            print(f"    {_one_line(_error(letter.exception))}")
    else:
        _print_summary(broker)


def _print_summary(broker: RedisBroker) -> None:
    seen = broker.inspect()
    print(f"queue {broker.namespace} on {broker.url}")
    pending = seen["pending"]
    print(f"  pending          {sum(pending.values())}" +
          (f"  (by priority: {', '.join(f'{p}: {n}' for p, n in pending.items())})"
           if pending else ""))
    due = seen["next_due"]
    print(f"  scheduled        {seen['scheduled']}" +
          (f"  (next due in {due:.1f}s)" if due is not None else ""))
    print(f"  running          {len(seen['running'])}")
    for task in seen["running"]:
        print(f"    {task['id']}  {task['name']}  delivery {task['delivery']}  "
              f"lease {task['lease']:.1f}s left")
    print(f"  dead             {seen['dead']}")
    print(f"  workers          {len(seen['workers'])}")
    for worker in seen["workers"]:
        print(f"    {worker['id']}  running {worker['running']}")


# -- shared ---------------------------------------------------------------------------

def _usage(command: str, message: str) -> int:
    print(f"taskqueue {command}: error: {_one_line(message)}", file=sys.stderr)
    return EXIT_USAGE


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _error(exc: BaseException) -> str:
    # The remote error's type and message, as `journal --dead` shows it: str()
    # of a TaskFailed carries the whole remote traceback too.
    if isinstance(exc, TaskFailed):
        return f"{exc.type_name}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def _when(epoch: Optional[float]) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))  # type: ignore[arg-type]
    except (OverflowError, OSError, ValueError, TypeError):
        return "?"


def _is_terminal(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False


def _whole_number(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, "
                                             f"got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value < 1e9:  # written this way round, NaN fails too
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value
