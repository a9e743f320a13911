"""A journal's SQLite file: owning it, checking it, and reading its rows.

Everything here is about the file, not about writing to it (that is
:class:`taskqueue.journal.Journal`'s writer thread):

- **Ownership.** One process and one queue own a journal at a time. The
  owner holds an ``flock`` on the file for as long as it has it open;
  SQLite itself runs in its normal locking mode with a write-ahead log, so
  that a reader (:class:`JournalView`, the command line) can look at the
  file while its owner runs, without blocking it.
- **Opening is not writing.** A file is checked through a read-only
  connection before it is opened for writing, so a file that is refused
  (not a journal, corrupt, of a newer schema, or owned by another queue)
  is left exactly as it was. A new journal is built in a temporary file
  and linked into place only when complete: a journal path never holds a
  half-made journal, and an empty file is never taken for one.
- **Rows are checked.** SQLite keeps whatever it is given, so a row can
  hold values taskqueue never writes (a text where a count belongs, a due
  time of 1e300): such a row is *damaged* (:attr:`Row.damage`), and the
  owner refuses a file that holds one, as it refuses a corrupt file. A row
  that is sound but that this program cannot use (arguments its
  serializer cannot read) comes back with :attr:`Row.problem`, and the
  queue makes it a dead letter saying so. Either way: safe values in place
  of the bad ones, never a crash later.

Every ``sqlite3`` error becomes a :class:`JournalError` naming the file, in
one line.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import stat
import tempfile
import threading
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Set, Tuple

from .errors import JournalError, JournalLocked
from .validate import MAX_SECONDS

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "MIGRATIONS", "COLUMNS", "DURABILITIES", "STATES",
           "PENDING", "SCHEDULED", "RUNNING", "DEAD", "Migration", "Row", "OBSERVED",
           "add_observed_tables", "owner_running", "open_probe",
           "check_durability", "claim", "release", "check_file", "check_rows", "decode_row",
           "one_line"]

APPLICATION_ID = 0x74517565  # "tQue": marks a SQLite file as a taskqueue journal
"""The ``PRAGMA application_id`` of every journal file."""
SCHEMA_VERSION = 1
"""The schema version this code writes (``PRAGMA user_version``)."""

DURABILITIES = {"normal": "NORMAL", "full": "FULL"}
"""The ``durability=`` values and the ``PRAGMA synchronous`` each one sets."""

PENDING, SCHEDULED, RUNNING, DEAD = "pending", "scheduled", "running", "dead"
STATES = (PENDING, SCHEDULED, RUNNING, DEAD)

SCHEMA_V1 = """
CREATE TABLE tasks (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    args         TEXT NOT NULL,
    kwargs       TEXT NOT NULL,
    options      TEXT NOT NULL,
    state        TEXT NOT NULL,  -- pending | scheduled | running | dead
    attempts     INTEGER NOT NULL,
    due          REAL,           -- epoch seconds, for scheduled
    submitted_at REAL NOT NULL,
    error        TEXT,
    traceback    TEXT,
    failed_at    REAL
)
"""

COLUMNS = ("id, name, args, kwargs, options, state, attempts, due, submitted_at, error, "
           "traceback, failed_at")
"""The columns a :class:`Row` is read from, in its order (a later schema may add more)."""

OBSERVED = """
CREATE TABLE IF NOT EXISTS history (  -- the statuses of the most recent finished tasks
    seq          INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    state        TEXT NOT NULL,  -- succeeded | failed | cancelled
    attempts     INTEGER NOT NULL,
    submitted_at REAL,
    started_at   REAL,
    finished_at  REAL NOT NULL,
    error        TEXT,
    priority     INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS counters (  -- totals over the file's life: succeeded, failed, ...
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS owner (  -- the process that owns the file now (or last did)
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    pid        INTEGER NOT NULL,
    host       TEXT NOT NULL,
    workers    INTEGER NOT NULL,
    started_at REAL NOT NULL
);
"""
"""Tables for watching a journal from outside (statuses, totals, the owner).

Added by an owner when it opens a file, if missing, without changing the
schema version: a taskqueue that does not know them ignores them, and a
reader finds them empty (or absent) on a file no such owner has opened."""

Migration = Callable[[sqlite3.Connection], None]

MIGRATIONS: Dict[int, Migration] = {}
"""Schema upgrades by the version they start from: ``MIGRATIONS[n]`` takes a
version-``n`` file to version ``n + 1``. Version 1 is the first schema, so
there is none yet; :class:`~taskqueue.journal.Journal` runs them in one
transaction at open."""

# Epoch times a row may hold: from 1970 to the year 3000. Anything else
# (a text, 1e300) is a damaged row, not a time to wait for.
_LATEST_TIME = 32503680000.0

SQLITE_MAGIC = b"SQLite format 3\x00"


def check_durability(durability: object) -> str:
    """Return ``durability`` if it is one of :data:`DURABILITIES`.

    Raises:
        ValueError: it is not (the message names the parameter and the value).
    """
    if durability not in DURABILITIES:
        raise ValueError(f"durability must be one of {', '.join(map(repr, DURABILITIES))}, "
                         f"got {durability!r}")
    return durability  # type: ignore[return-value]


def one_line(text: object) -> str:
    """Return ``str(text)`` on one line (SQLite's reports can span many)."""
    return " ".join(str(text).split())


def error(path: str, what: str, exc: BaseException) -> JournalError:
    """Return the JournalError for ``path``: ``"PATH what: reason"``, on one line."""
    return JournalError(f"{path} {what}: {one_line(exc)}")


# -- ownership ---------------------------------------------------------------------------

# The files this process owns, by (device, inode): a second owner in the same
# process is refused before it opens the file at all. (Closing any descriptor
# of a file drops every POSIX lock the process holds on it, SQLite's too.)
_owned: Set[Tuple[int, int]] = set()
_owned_lock = threading.Lock()
_lock_fds: Dict[int, Tuple[int, int]] = {}


def claim(path: str, *, create: bool = True) -> int:
    """Become the owner of the journal at ``path``; return the descriptor that holds the lock.

    A missing file is created first, complete (see the module docstring),
    when ``create`` is true.

    Raises:
        JournalLocked: another queue, in this or another process, owns it.
        JournalError: the path is a dangling link or not a regular file,
            is missing (without ``create``), or cannot be opened.
    """
    _refuse_odd_paths(path)
    if create and not os.path.exists(path):
        _create(path)
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise JournalError(f"{path}: no such journal file") from None
    except OSError as exc:
        raise JournalError(f"{path}: cannot open the journal file: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise JournalError(f"{path} is not a regular file, so not a taskqueue journal")
        inode = (st.st_dev, st.st_ino)
        with _owned_lock:
            if inode in _owned:
                raise _locked(path)
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise _locked(path) from None
            _owned.add(inode)
            _lock_fds[fd] = inode
    except BaseException:
        os.close(fd)
        raise
    return fd


def owner_running(path: str, probe: Optional[int]) -> bool:
    """Whether a queue owns the journal at ``path`` now, in this or another process.

    ``probe`` is a descriptor of the file that the caller keeps open for as
    long as it reads the file (see :func:`open_probe`): opening and closing
    one here would drop the POSIX locks of the caller's SQLite connection.
    """
    try:
        st = os.stat(path)
    except OSError:
        return False
    with _owned_lock:
        if (st.st_dev, st.st_ino) in _owned:
            return True
    if fcntl is None or probe is None:  # pragma: no cover - not on POSIX
        return False
    try:
        fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(probe, fcntl.LOCK_UN)
    return False


def open_probe(path: str) -> Optional[int]:
    """A descriptor of ``path`` for :func:`owner_running`, to open before a reading connection.

    None if the file is owned in this process (nothing to probe, and closing
    a descriptor later would drop the owner's locks) or cannot be opened.
    """
    try:
        st = os.stat(path)
        with _owned_lock:
            if (st.st_dev, st.st_ino) in _owned:
                return None
        return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None


def release(fd: int) -> None:
    """Give up the ownership :func:`claim` returned (after the file's connections are closed)."""
    with _owned_lock:
        inode = _lock_fds.pop(fd, None)
        if inode is not None:
            _owned.discard(inode)
    os.close(fd)  # releases the flock


def _after_fork_in_child() -> None:
    # The child shares each lock with its parent (one open file description):
    # its copies of the descriptors are closed so that a child living on after
    # its parent does not keep the journal locked. This does not unlock it for
    # the parent, which still holds the description.
    global _owned_lock
    _owned_lock = threading.Lock()
    for fd in list(_lock_fds):
        try:
            os.close(fd)
        except OSError:
            pass
    _lock_fds.clear()
    _owned.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _locked(path: str) -> JournalLocked:
    return JournalLocked(f"{path} is in use by another TaskQueue (in this or another process); "
                         "one queue owns a journal at a time")


def _refuse_odd_paths(path: str) -> None:
    if os.path.islink(path) and not os.path.exists(path):
        raise JournalError(f"{path} is a symbolic link to a missing file; refusing to create "
                           "its target")
    if os.path.exists(path) and not os.path.isfile(path):
        raise JournalError(f"{path} is not a regular file, so not a taskqueue journal")


def _create(path: str) -> None:
    # Built in a temporary file (owner-only from birth: the -wal file SQLite
    # makes later copies its permissions), then linked into place, which
    # fails if another process got there first: then its file is the journal.
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, temporary = tempfile.mkstemp(prefix=".taskqueue-new-", suffix=".db", dir=directory)
    except OSError as exc:
        raise JournalError(f"{path}: cannot create the journal file: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        conn = sqlite3.connect(temporary, isolation_level=None)
        try:
            conn.execute("BEGIN")
            conn.execute(SCHEMA_V1)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        finally:
            conn.close()
        _link_into_place(temporary, path)
    except sqlite3.Error as exc:
        raise error(path, "cannot be created", exc) from None
    except OSError as exc:
        raise JournalError(f"{path}: cannot create the journal file: {exc.strerror or exc}") from None
    finally:
        try:
            os.unlink(temporary)
        except OSError:
            pass


def _link_into_place(temporary: str, path: str) -> None:
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass  # made meanwhile by another opener: that one is the journal
    except OSError:
        # A file system without hard links: copy into a file that must not
        # exist yet (O_EXCL), which leaves a moment in which it is empty.
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return
        with os.fdopen(fd, "wb") as target, open(temporary, "rb") as source:
            target.write(source.read())
            target.flush()
            os.fsync(target.fileno())


# -- checking ----------------------------------------------------------------------------

def read_only(path: str) -> sqlite3.Connection:
    """Open ``path`` with a read-only SQLite connection (it can never change the file).

    Without a ``-wal`` file beside it (nobody has it open in WAL mode, and
    nothing was left uncommitted in a log), the file is opened immutable, so
    that not even SQLite's side files are created next to it; with one, the
    log is read too (a running owner's, or a crash's).

    Raises:
        JournalError: it is not a SQLite database or cannot be opened.
    """
    try:
        with open(path, "rb") as file:
            header = file.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        raise JournalError(f"{path}: no such journal file") from None
    except OSError as exc:
        raise JournalError(f"{path}: cannot read the journal file: {exc.strerror or exc}") from None
    if not header:
        raise JournalError(f"{path} is an empty file, not a taskqueue journal; give a path "
                           "that does not exist yet and it is created")
    if header != SQLITE_MAGIC:
        raise JournalError(f"{path} is not a taskqueue journal (not a SQLite database)")
    uri = "file:" + _quote(os.path.abspath(path)) + "?mode=ro"
    if not os.path.exists(path + "-wal"):
        uri += "&immutable=1"
    try:
        return sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=5.0)
    except sqlite3.Error as exc:
        raise error(path, "cannot be opened", exc) from None


def _quote(path: str) -> str:
    return path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def add_observed_tables(conn: sqlite3.Connection) -> None:
    """Add :data:`OBSERVED`'s tables, and the tasks' ``started_at``, where missing (the owner, at open)."""
    conn.executescript(OBSERVED)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(tasks)")]
    if "started_at" not in columns:
        conn.execute("ALTER TABLE tasks ADD COLUMN started_at REAL")


def check_file(path: str, conn: sqlite3.Connection, newest: int) -> int:
    """Check that ``conn``'s file is a sound journal of a version up to ``newest``; return its version.

    Raises:
        JournalError: it is not a journal, is corrupt, or is of a newer version.
    """
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if app_id != APPLICATION_ID:
            raise JournalError(f"{path} is not a taskqueue journal (a SQLite database of "
                               "another application); refusing to touch it")
        if version > newest:
            raise JournalError(f"{path} has journal schema version {version}, newer than this "
                               f"taskqueue understands ({newest}); upgrade taskqueue to open it")
        problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            raise JournalError(f"{path} is not a taskqueue journal (not a SQLite database)") from None
        raise error(path, "is corrupt", exc) from None
    if problems != ["ok"]:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise JournalError(f"{path} is corrupt: {one_line(problems[0])}{more}")
    return int(version)


# -- rows --------------------------------------------------------------------------------

class Row(NamedTuple):
    """One task as the journal holds it."""

    id: str
    """The task's journal id (also its handle's ``id``)."""
    name: str
    """The registered name of its task function."""
    args: List[Any]
    """Positional arguments, decoded (a JSON list: tuples come back as lists)."""
    kwargs: Dict[str, Any]
    """Keyword arguments, decoded."""
    options: Dict[str, Any]
    """The task's own options (retries, priority, ...), as plain JSON values."""
    state: str
    """``pending``, ``scheduled``, ``running`` (when the process stopped) or ``dead``."""
    attempts: int
    """Attempts started so far."""
    due: Optional[float]
    """For ``scheduled``: when it is due, in seconds since the epoch."""
    submitted_at: float
    """When it was submitted, in seconds since the epoch."""
    error: Optional[str]
    """For ``dead``: the final error, ``"Type: message"``."""
    traceback: Optional[str]
    """For ``dead``: the final error's traceback."""
    failed_at: Optional[float]
    """For ``dead``: when it failed, in seconds since the epoch."""
    problem: Optional[str] = None
    """Why its arguments cannot be used, if they cannot (then they are empty):
    the queue makes it a dead letter saying so."""
    damage: Optional[str] = None
    """What it holds that taskqueue never writes, if anything (then safe values
    stand in): an owner refuses a file with a damaged row."""


def decode_row(values: Tuple[Any, ...], loads: Optional[Callable[[Any], Any]]) -> Row:
    """Turn the :data:`COLUMNS` of one row into a checked :class:`Row`.

    Never raises: a damaged row comes back with :attr:`Row.damage`, one
    whose arguments cannot be decoded with :attr:`Row.problem`. With
    ``loads`` None the arguments are left undecoded (empty).
    """
    damage: List[str] = []
    row_id, name, raw_args, raw_kwargs, raw_options, state, attempts, due, submitted_at, \
        error_text, traceback, failed_at = values
    if not isinstance(row_id, str) or not row_id:
        damage.append(f"its id {row_id!r} is not a text")
        row_id = str(row_id)
    if not isinstance(name, str) or not name:
        damage.append(f"its task name {name!r} is not a text")
        name = str(name)
    if state not in STATES:
        damage.append(f"its state {state!r} is not one of {', '.join(STATES)}")
        state = PENDING
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        damage.append(f"its attempts {attempts!r} is not a whole number")
        attempts = 0
    due = _checked_time("due time", due, damage, optional=True)
    submitted_at = _checked_time("submission time", submitted_at, damage, optional=False) or 0.0
    failed_at = _checked_time("failure time", failed_at, damage, optional=True)
    if error_text is not None and not isinstance(error_text, str):
        error_text = str(error_text)
    if traceback is not None and not isinstance(traceback, str):
        traceback = str(traceback)
    options = _checked_options(raw_options, damage)
    args: List[Any] = []
    kwargs: Dict[str, Any] = {}
    problem = None
    try:
        if loads is None:
            raise _NotDecoded
        decoded = loads(raw_args), loads(raw_kwargs)
        if not isinstance(decoded[0], list) or not isinstance(decoded[1], dict):
            raise TypeError("expected a list of arguments and a dict of keyword arguments")
        args, kwargs = decoded
    except _NotDecoded:
        pass
    except Exception as exc:
        problem = f"its arguments cannot be decoded ({type(exc).__name__}: {one_line(exc)})"
    return Row(row_id, name, args, kwargs, options, state, attempts, due, submitted_at,
               error_text, traceback, failed_at, problem, "; ".join(damage) or None)


class _NotDecoded(Exception):
    """The caller did not ask for the arguments."""


# What each option a row may hold must be: taskqueue writes nothing else.
_OPTION_CHECKS: Dict[str, Callable[[Any], bool]] = {
    "retries": lambda v: v is None or (type(v) is int and v >= 0),
    "priority": lambda v: type(v) is int,
    "time_limit": lambda v: v is None or (type(v) in (int, float) and 0 < v <= MAX_SECONDS),
    "key": lambda v: v is None or (isinstance(v, str) and bool(v)),
    "name": lambda v: isinstance(v, str) and bool(v),
    "backoff": lambda v: v is None or isinstance(v, dict),
}


def _checked_options(raw: Any, damage: List[str]) -> Dict[str, Any]:
    try:
        options = json.loads(raw)
    except Exception as exc:
        damage.append(f"its options are not JSON ({type(exc).__name__}: {one_line(exc)})")
        return {}
    if not isinstance(options, dict):
        damage.append(f"its options {one_line(repr(options))[:60]} are not a JSON object")
        return {}
    for option, value in options.items():
        check = _OPTION_CHECKS.get(option)
        if check is None or not check(value):
            damage.append(f"its option {option}={one_line(repr(value))[:60]} is not one "
                          "taskqueue writes")
            return {}
    return options


def _checked_time(what: str, value: Any, damage: List[str], *, optional: bool) -> Optional[float]:
    if value is None and optional:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value) and 0 <= value <= _LATEST_TIME:
        return float(value)
    damage.append(f"its {what} {value!r} is not a time")
    return None


def check_rows(path: str, conn: sqlite3.Connection) -> None:
    """Refuse a file with a damaged row (see :attr:`Row.damage`), naming it.

    Raises:
        JournalError: a row holds what taskqueue never writes (one line,
            naming the file and the first such row), or the rows cannot be read.
    """
    damaged: List[Row] = []
    try:
        for values in conn.execute(f"SELECT {COLUMNS} FROM tasks"):
            row = decode_row(values, None)  # the arguments are the serializer's business
            if row.damage is not None:
                damaged.append(row)
    except sqlite3.Error as exc:
        raise error(path, "cannot be read", exc) from None
    if damaged:
        first = damaged[0]
        raise JournalError(f"{path} is corrupt: {len(damaged)} task row(s) hold values "
                           f"taskqueue never writes; the first, {first.id}: {first.damage}. "
                           f"'python -m taskqueue journal {path} --damaged' lists them")
