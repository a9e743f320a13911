"""Task functions: functions registered on a queue under unique names.

``@queue.task`` turns a function into a :class:`TaskFunction`: a plain call
still runs it inline, and ``.submit(...)`` queues it with the options given
at decoration (retries, priority, ...). The :class:`Registry` keeps task
functions by name, because a name is what a durable journal can write down
and later turn back into a function; so names are unique per registry.

Neither class knows the queue: they are handed its ``submit`` (and later
``asubmit``) as callables that take a :class:`Task`.
"""

from __future__ import annotations

import functools
import threading
from types import MappingProxyType
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    Generic,
    List,
    Mapping,
    Optional,
    TypeVar,
    Union,
    overload,
)

from .task import Task, TaskHandle, callable_name

__all__ = ["TaskFunction", "Registry", "OPTIONS", "default_name"]

R = TypeVar("R")

Submit = Callable[[Task], TaskHandle]
AsyncSubmit = Callable[[Task], Awaitable[TaskHandle]]

OPTIONS = ("retries", "backoff", "retry_on", "priority", "delay", "time_limit", "key")
"""The :class:`Task` fields a task function holds defaults for; ``name`` is set apart."""


def default_name(fn: Callable[..., Any]) -> str:
    """Return the name ``fn`` is registered under unless one is given.

    Returns:
        ``f"{fn.__module__}.{fn.__qualname__}"``, or the qualified name
        alone when ``fn`` has no module.
    """
    module = getattr(fn, "__module__", None)
    qualname = callable_name(fn)
    return f"{module}.{qualname}" if isinstance(module, str) and module else qualname


def _nothing() -> None:
    """Stands in for the function while options are checked."""


def _checked(options: Mapping[str, Any], name: Optional[str] = None) -> Dict[str, Any]:
    """Return ``options`` as a new dict if :class:`Task` accepts them and ``name``.

    Raises:
        TypeError: an option is unknown (named in the message), or a value has
            the wrong type.
        ValueError: a value is out of range.
    """
    if "name" in options:
        raise TypeError("name is not an option: a task function keeps the name it was "
                        "registered under (register the function again under another name)")
    unknown = [option for option in options if option not in OPTIONS]
    if unknown:
        raise TypeError(f"unknown task option(s) {', '.join(map(repr, unknown))}; "
                        f"the options are {', '.join(OPTIONS)}")
    # Building a Task is the one place values are checked: the same errors
    # as Task(...) itself, raised now rather than later inside a worker.
    Task(_nothing, name=name, **options)
    return dict(options)


class TaskFunction(Generic[R]):
    """A function with a registered name and default task options.

    Calling it runs the function inline, in the caller's thread, as if it
    were not decorated. :meth:`submit` queues it instead, as a :class:`Task`
    named after the registered name, so handles, events and dead letters
    show that name. ``__name__``, ``__doc__`` and ``__wrapped__`` are the
    function's.

    Usually made by :meth:`Registry.register` (``@queue.task``); made
    directly, it is not registered anywhere.

    Args:
        fn: the function.
        submit: queues a Task and returns its handle (the queue's ``submit``).
        name: the registered name; :func:`default_name` of ``fn`` if None.
        options: defaults for the Task fields listed in :data:`OPTIONS`.
        asubmit: the queue's awaitable submit, used by :meth:`asubmit`.

    Raises:
        TypeError: ``fn`` or ``submit`` is not callable, an option is unknown,
            or a value has the wrong type (as ``Task(...)`` raises it).
        ValueError: ``name`` is empty, or a value is out of range.

    Immutable once made: every method is safe to call from any thread.
    """

    def __init__(
        self,
        fn: Callable[..., R],
        /,
        *,
        submit: Submit,
        name: Optional[str] = None,
        options: Optional[Mapping[str, Any]] = None,
        asubmit: Optional[AsyncSubmit] = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        if not callable(submit):
            raise TypeError(f"submit must be callable, got {submit!r}")
        if asubmit is not None and not callable(asubmit):
            raise TypeError(f"asubmit must be callable or None, got {asubmit!r}")
        if name is None:
            name = default_name(fn)
        checked = _checked(options or {}, name)
        # First: update_wrapper copies fn.__dict__ into ours, and must not
        # overwrite the attributes set below.
        functools.update_wrapper(self, fn)
        self._fn = fn
        self._name = name
        self._options = checked
        self._submit = submit
        self._asubmit = asubmit
        # The task function that tasks name as their fn: the registered one,
        # also for variants made by options(), so that a Task pickles by
        # reference to the module-level name (see __reduce__).
        self._root: TaskFunction[R] = self

    @property
    def name(self) -> str:
        """The name the function is registered under, and its tasks carry."""
        return self._name

    def __call__(self, /, *args: Any, **kwargs: Any) -> R:
        """Run the function now, in this thread; no queue is involved."""
        return self._fn(*args, **kwargs)

    def task(self, /, *args: Any, **kwargs: Any) -> Task:
        """Return the Task that :meth:`submit` would queue, without queueing it.

        Args:
            args, kwargs: the function's arguments.
        """
        return Task(self._root, args, kwargs, name=self._name, **self._options)

    def submit(self, /, *args: Any, **kwargs: Any) -> TaskHandle:
        """Queue a call of the function with this task function's options.

        Args:
            args, kwargs: the function's arguments.

        Returns:
            The handle of the submitted task.

        Raises:
            Whatever the queue's ``submit`` raises (``QueueFull``, ``QueueClosed``).
        """
        return self._submit(self.task(*args, **kwargs))

    async def asubmit(self, /, *args: Any, **kwargs: Any) -> TaskHandle:
        """Like :meth:`submit`, for a coroutine: awaits the queue's ``asubmit``.

        Returns:
            The handle of the submitted task.

        Raises:
            RuntimeError: this task function was made without ``asubmit``.
        """
        if self._asubmit is None:
            raise RuntimeError(f"task function {self._name!r} was made without asubmit; "
                               "use submit(), or pass asubmit= when making it")
        return await self._asubmit(self.task(*args, **kwargs))

    def options(self, **overrides: Any) -> TaskFunction[R]:
        """Return this task function with some options changed.

        The result has the same name and submits to the same queue; it is
        not registered again. Chained calls merge, the later value winning.

        Args:
            overrides: new values for options listed in :data:`OPTIONS`.

        Raises:
            TypeError: an option is unknown, is ``name``, or has the wrong type.
            ValueError: a value is out of range.
        """
        variant = TaskFunction(self._fn, submit=self._submit, name=self._name,
                               options={**self._options, **overrides}, asubmit=self._asubmit)
        variant._root = self._root
        return variant

    def __reduce__(self) -> str:
        # Pickled, like a function, as a reference to the module-level name
        # the decorator bound it to: a Task (or dead letter) holding it can
        # be pickled, and unpickles to the same object. The function itself
        # could not be: its module-level name now means this wrapper.
        return callable_name(self._root._fn)

    def __repr__(self) -> str:
        return f"<TaskFunction {self._name!r}>"


class Registry:
    """Task functions of one queue, by unique name.

    Args:
        submit: queues a Task and returns its handle (the queue's ``submit``).
        asubmit: the queue's awaitable submit, if it has one.

    Raises:
        TypeError: ``submit`` (or ``asubmit``) is not callable.

    Every method is safe to call from any thread. Registering takes a
    lock; reading does not: the name table is replaced, never changed in
    place, so a reader always sees one whole table.
    """

    def __init__(self, submit: Submit, *, asubmit: Optional[AsyncSubmit] = None) -> None:
        if not callable(submit):
            raise TypeError(f"submit must be callable, got {submit!r}")
        if asubmit is not None and not callable(asubmit):
            raise TypeError(f"asubmit must be callable or None, got {asubmit!r}")
        self._submit = submit
        self._asubmit = asubmit
        self._lock = threading.Lock()
        self._by_name: Dict[str, TaskFunction[Any]] = {}

    def register(self, fn: Callable[..., R], /, *, name: Optional[str] = None,
                 **options: Any) -> TaskFunction[R]:
        """Register ``fn`` under ``name`` with default task options.

        Args:
            fn: the function.
            name: a unique, non-empty name; :func:`default_name` of ``fn``
                (``module.qualname``) if None.
            options: defaults for the Task fields listed in :data:`OPTIONS`.

        Returns:
            The registered :class:`TaskFunction`.

        Raises:
            TypeError: ``fn`` is not callable, an option is unknown, or a
                value has the wrong type.
            ValueError: the name is taken or empty, or a value is out of range.
        """
        if isinstance(fn, str):
            raise TypeError(f"fn must be callable, got the str {fn!r}; pass a name as name=")
        function = TaskFunction(fn, submit=self._submit, name=name, options=options,
                                asubmit=self._asubmit)
        with self._lock:
            if function.name in self._by_name:
                raise ValueError(f"a task named {function.name!r} is already registered; "
                                 "pass name= to register this function under another name")
            # Copy, then swap: readers hold the old table and never need the lock.
            # Registrations are few, so the copying costs nothing that matters.
            by_name = dict(self._by_name)
            by_name[function.name] = function
            self._by_name = by_name
        return function

    @overload
    def task(self, fn: Callable[..., R], /, *, name: Optional[str] = None,
             **options: Any) -> TaskFunction[R]: ...

    @overload
    def task(self, fn: None = None, /, *, name: Optional[str] = None,
             **options: Any) -> Callable[[Callable[..., R]], TaskFunction[R]]: ...

    def task(
        self, fn: Optional[Callable[..., R]] = None, /, *, name: Optional[str] = None,
        **options: Any,
    ) -> Union[TaskFunction[R], Callable[[Callable[..., R]], TaskFunction[R]]]:
        """Register a function, as a decorator with or without arguments.

        ``@registry.task`` registers at once; ``@registry.task(retries=3)``
        checks the options at once and registers the function it decorates.

        Args:
            fn: the function, when used bare; None when options are given.
            name, options: as for :meth:`register`.

        Returns:
            The :class:`TaskFunction`, or a decorator that makes one.

        Raises:
            TypeError, ValueError: as :meth:`register`; with options, the
                bad ones are reported before anything is decorated.
        """
        if fn is not None:
            return self.register(fn, name=name, **options)
        _checked(options, name)

        def decorate(function: Callable[..., R]) -> TaskFunction[R]:
            return self.register(function, name=name, **options)

        return decorate

    def get(self, name: str) -> TaskFunction[Any]:
        """Return the task function registered under ``name``.

        Raises:
            KeyError: no task function has that name.
        """
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no task function is registered under {name!r}") from None

    def names(self) -> List[str]:
        """Return the registered names, in the order they were registered."""
        return list(self._by_name)

    @property
    def tasks(self) -> Mapping[str, TaskFunction[Any]]:
        """A read-only mapping of name to task function, as registered right now.

        Later registrations do not appear in a mapping already obtained.
        """
        return MappingProxyType(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self._by_name)

    def __repr__(self) -> str:
        return f"<Registry of {len(self._by_name)} task function(s)>"
