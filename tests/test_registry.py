"""Tests for taskqueue.registry: task functions, their options, and the name table.

Unit tests hand the Registry a fake ``submit`` that records each Task and
returns a sentinel. The integration tests at the end bind it to a real
TaskQueue's ``submit``, which is all the pool's wiring will do.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import pickle
import threading
from typing import Any, Dict, List

import pytest

from conftest import WAIT, Gate
from taskqueue import Backoff, Task, TaskHandle, TaskState
from taskqueue.registry import Registry, TaskFunction, default_name

SENTINEL = object()


class FakeSubmit:
    """A fake ``submit``: records every Task and returns SENTINEL."""

    def __init__(self) -> None:
        self.tasks: List[Task] = []

    def __call__(self, task: Task) -> Any:
        self.tasks.append(task)
        return SENTINEL


def add(x: int, y: int = 0) -> int:
    """Add two numbers."""
    return x + y


# A module-level task function, so that pickle can find it by name.
module_registry = Registry(FakeSubmit())


@module_registry.task(retries=2)
def pickled_task(x: int) -> int:
    return x


@pytest.fixture
def submit() -> FakeSubmit:
    return FakeSubmit()


@pytest.fixture
def registry(submit: FakeSubmit) -> Registry:
    return Registry(submit)


# -- a task function -----------------------------------------------------------

def test_a_plain_call_runs_inline_and_submits_nothing(registry: Registry, submit: FakeSubmit) -> None:
    callers: List[int] = []

    @registry.task
    def work(x: int) -> int:
        callers.append(threading.get_ident())
        return x * 2

    assert work(21) == 42
    assert callers == [threading.get_ident()]
    assert submit.tasks == []


def test_the_wrapper_looks_like_the_function(registry: Registry) -> None:
    function = registry.register(add)
    assert function.__name__ == "add"
    assert function.__qualname__ == "add"
    assert function.__doc__ == "Add two numbers."
    assert function.__wrapped__ is add
    assert inspect.signature(function) == inspect.signature(add)


def test_submit_queues_a_task_named_after_the_registration(registry: Registry,
                                                          submit: FakeSubmit) -> None:
    function = registry.register(add, name="math.add", retries=3, priority=5)
    assert function.submit(1, y=2) is SENTINEL
    [task] = submit.tasks
    assert task.name == "math.add"
    assert (task.args, task.kwargs) == ((1,), {"y": 2})
    assert (task.retries, task.priority) == (3, 5)
    assert task.fn(*task.args, **task.kwargs) == 3


def test_task_builds_the_task_without_submitting_it(registry: Registry, submit: FakeSubmit) -> None:
    function = registry.register(add, delay=1.5, key="k")
    task = function.task(4, 5)
    assert isinstance(task, Task)
    assert (task.args, task.delay, task.key, task.name) == ((4, 5), 1.5, "k", function.name)
    assert submit.tasks == []


def test_arguments_named_like_options_go_to_the_function(registry: Registry,
                                                         submit: FakeSubmit) -> None:
    @registry.task
    def echo(**kwargs: Any) -> Dict[str, Any]:
        return kwargs

    echo.submit(priority=9, name="n", self=1)
    [task] = submit.tasks
    assert task.kwargs == {"priority": 9, "name": "n", "self": 1}
    assert task.priority == 0 and task.name == echo.name


def test_the_default_name_is_module_and_qualified_name(registry: Registry) -> None:
    function = registry.register(add)
    assert function.name == f"{__name__}.add" == default_name(add)
    assert registry.names() == [f"{__name__}.add"]


def test_a_task_function_made_directly_works_and_is_not_registered(submit: FakeSubmit) -> None:
    function = TaskFunction(add, submit=submit, name="direct", options={"retries": 1})
    assert function.submit(2, 3) is SENTINEL
    assert submit.tasks[0].name == "direct" and submit.tasks[0].retries == 1
    assert function(2, 3) == 5


def test_a_task_of_a_module_level_task_function_pickles_by_reference() -> None:
    task = pickled_task.options(priority=4).task(7)
    copy = pickle.loads(pickle.dumps(task))
    assert copy.fn is pickled_task
    assert (copy.args, copy.retries, copy.priority) == ((7,), 2, 4)
    assert copy.fn(*copy.args) == 7


# -- options -------------------------------------------------------------------

def test_options_merge_when_chained_and_leave_the_original_alone(registry: Registry) -> None:
    base = registry.register(add, retries=3, priority=5)
    variant = base.options(priority=1).options(delay=2, priority=7)
    task = variant.task(1)
    assert (task.retries, task.priority, task.delay) == (3, 7, 2.0)
    assert (base.task(1).priority, base.task(1).delay) == (5, None)


def test_a_variant_keeps_the_name_and_is_not_registered_again(registry: Registry,
                                                             submit: FakeSubmit) -> None:
    base = registry.register(add, name="adder")
    variant = base.options(key="once")
    assert variant.name == "adder"
    assert registry.names() == ["adder"]
    assert registry.get("adder") is base
    assert variant.submit(1) is SENTINEL
    assert submit.tasks[0].name == "adder" and submit.tasks[0].key == "once"
    assert variant(1, 1) == 2


@pytest.mark.parametrize("make", ["register", "decorator", "options"])
def test_an_unknown_option_is_a_type_error_naming_it(registry: Registry, make: str) -> None:
    with pytest.raises(TypeError, match="'retires'"):
        if make == "register":
            registry.register(add, retires=3)
        elif make == "decorator":
            registry.task(retires=3)
        else:
            registry.register(add).options(retires=3)
    assert registry.names() == ([f"{__name__}.add"] if make == "options" else [])


@pytest.mark.parametrize("field", ["fn", "args", "kwargs"])
def test_task_fields_that_are_not_options_are_refused(registry: Registry, field: str) -> None:
    with pytest.raises(TypeError, match=repr(field)):
        registry.register(add, **{field: ()})


def test_the_name_cannot_be_changed_by_options(registry: Registry) -> None:
    function = registry.register(add)
    with pytest.raises(TypeError, match="name is not an option"):
        function.options(name="other")


BAD_OPTIONS = [
    {"retries": -1}, {"retries": "3"}, {"retries": 1.0}, {"backoff": 0.5},
    {"retry_on": "ValueError"}, {"priority": 1.5}, {"delay": -1}, {"delay": math.nan},
    {"time_limit": 0}, {"key": ""}, {"key": 5},
]


@pytest.mark.parametrize("options", BAD_OPTIONS, ids=lambda o: repr(o))
@pytest.mark.parametrize("make", ["register", "decorator", "options"])
def test_a_bad_value_raises_what_task_raises_at_once(registry: Registry, submit: FakeSubmit,
                                                    options: Dict[str, Any], make: str) -> None:
    with pytest.raises((TypeError, ValueError)) as expected:
        Task(add, **options)
    with pytest.raises(type(expected.value)) as got:
        if make == "register":
            registry.register(add, name="bad", **options)
        elif make == "decorator":
            registry.task(name="bad", **options)  # before anything is decorated
        else:
            registry.register(add, name="good").options(**options)
    assert str(got.value) == str(expected.value)
    assert "bad" not in registry
    assert submit.tasks == []


# -- the registry --------------------------------------------------------------

def test_bare_and_called_decorators_both_register(registry: Registry) -> None:
    @registry.task
    def bare() -> str:
        return "bare"

    @registry.task()
    def called() -> str:
        return "called"

    @registry.task(name="named", priority=2)
    def with_options() -> str:
        return "named"

    assert isinstance(bare, TaskFunction) and isinstance(called, TaskFunction)
    assert registry.tasks == {bare.name: bare, called.name: called, "named": with_options}
    assert (bare(), called(), with_options()) == ("bare", "called", "named")
    assert with_options.task().priority == 2


def test_a_duplicate_name_is_a_value_error_and_keeps_the_first(registry: Registry) -> None:
    first = registry.register(add, name="job")
    with pytest.raises(ValueError, match=r"'job' is already registered; pass name="):
        registry.register(lambda: None, name="job")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(add, name="job")
    assert registry.get("job") is first
    assert len(registry) == 1


def test_registering_one_function_twice_needs_a_second_name(registry: Registry) -> None:
    registry.register(add)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(add)
    second = registry.register(add, name="add-again")
    assert registry.names() == [f"{__name__}.add", "add-again"]
    assert second.__wrapped__ is add


@pytest.mark.parametrize("fn, match", [
    (42, "fn must be callable"), (None, "fn must be callable"), ("job", "pass a name as name="),
])
def test_something_not_callable_is_a_type_error(registry: Registry, fn: Any, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        registry.register(fn)
    assert len(registry) == 0


@pytest.mark.parametrize("name, error", [("", ValueError), (3, TypeError), (b"job", TypeError)])
def test_a_name_must_be_a_non_empty_str(registry: Registry, name: Any, error: type) -> None:
    with pytest.raises(error, match="name"):
        registry.register(add, name=name)
    with pytest.raises(error, match="name"):
        registry.task(name=name)
    assert len(registry) == 0


def test_get_names_contains_and_len(registry: Registry) -> None:
    registry.register(add, name="b")
    registry.register(add, name="a")
    assert registry.names() == ["b", "a"]
    assert registry.get("a").name == "a"
    assert "a" in registry and "c" not in registry
    assert len(registry) == 2
    with pytest.raises(KeyError, match="'c'"):
        registry.get("c")


def test_the_mapping_is_read_only_and_a_snapshot(registry: Registry) -> None:
    first = registry.register(add, name="first")
    tasks = registry.tasks
    with pytest.raises(TypeError):
        tasks["other"] = first  # type: ignore[index]
    registry.register(add, name="second")
    assert list(tasks) == ["first"]
    assert list(registry.tasks) == ["first", "second"]


@pytest.mark.parametrize("bad", [None, 42, "submit"])
def test_submit_must_be_callable(bad: Any) -> None:
    with pytest.raises(TypeError, match="submit must be callable"):
        Registry(bad)
    with pytest.raises(TypeError, match="submit must be callable"):
        TaskFunction(add, submit=bad)
    with pytest.raises(TypeError, match="asubmit must be callable"):
        Registry(FakeSubmit(), asubmit=42)  # type: ignore[arg-type]


@pytest.mark.timeout(30)
def test_concurrent_registrations_are_all_kept_and_a_contested_name_goes_once(
        registry: Registry) -> None:
    # Given sixteen threads started together: eight distinct names, eight on one name
    threads_count = 16
    barrier = threading.Barrier(threads_count)
    won: List[str] = []
    lost: List[BaseException] = []

    def register(i: int) -> None:
        barrier.wait(WAIT)
        name = f"own-{i}" if i % 2 else "contested"
        try:
            registry.register(add, name=name)
            won.append(name)
        except ValueError as exc:
            lost.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    # Then every distinct name is registered, and the contested one exactly once
    assert not any(t.is_alive() for t in threads)
    assert sorted(won) == sorted(["contested"] + [f"own-{i}" for i in range(1, 16, 2)])
    assert len(lost) == 7
    assert set(registry.names()) == set(won)


# -- asubmit -------------------------------------------------------------------

def test_asubmit_awaits_the_queues_asubmit(submit: FakeSubmit) -> None:
    async def asubmit(task: Task) -> Any:
        return submit(task)

    registry = Registry(submit, asubmit=asubmit)
    function = registry.register(add, name="async-add", priority=3)
    assert asyncio.run(function.options(delay=1).asubmit(1, 2)) is SENTINEL
    [task] = submit.tasks
    assert (task.name, task.args, task.priority, task.delay) == ("async-add", (1, 2), 3, 1.0)


def test_asubmit_without_a_queue_asubmit_is_a_clear_runtime_error(registry: Registry,
                                                                  submit: FakeSubmit) -> None:
    function = registry.register(add)
    with pytest.raises(RuntimeError, match="without asubmit"):
        asyncio.run(function.asubmit(1))
    assert submit.tasks == []


# -- on a real queue -----------------------------------------------------------

class FailTimes:
    """A task body that raises ValueError on its first ``times`` calls."""

    def __init__(self, times: int) -> None:
        self.times = times
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, x: int) -> int:
        with self._lock:
            self.calls += 1
            call = self.calls
        if call <= self.times:
            raise ValueError(f"call {call} failed")
        return x


@pytest.mark.timeout(30)
def test_on_a_real_queue_submit_gives_the_result_under_the_registered_name(make_queue) -> None:
    queue = make_queue(workers=2)
    registry = Registry(queue.submit)
    function = registry.register(add, name="bookings.add")
    handle = function.submit(40, y=2)
    assert isinstance(handle, TaskHandle)
    assert handle.result(WAIT) == 42
    assert handle.name == "bookings.add"


@pytest.mark.timeout(30)
def test_on_a_real_queue_options_make_a_failing_task_retry(make_queue) -> None:
    # Given a queue that does not retry, and two functions that fail twice
    queue = make_queue(workers=1, retries=0)
    registry = Registry(queue.submit)
    plain = registry.register(FailTimes(2), name="plain")
    flaky = registry.register(FailTimes(2), name="flaky")
    # When one is submitted as registered, it fails at once
    handle = plain.submit(1)
    with pytest.raises(ValueError, match="call 1 failed"):
        handle.result(WAIT)
    assert handle.attempts == 1
    # But the other, given retries=2 by options(), succeeds on its third attempt
    retried = flaky.options(retries=2, backoff=Backoff.none()).submit(7)
    assert retried.result(WAIT) == 7
    assert retried.attempts == 3
    assert retried.state is TaskState.SUCCEEDED and retried.name == "flaky"


@pytest.mark.timeout(30)
def test_on_a_real_queue_a_plain_call_runs_in_the_callers_thread(make_queue) -> None:
    queue = make_queue(workers=1)
    registry = Registry(queue.submit)

    @registry.task(name="whoami")
    def whoami() -> int:
        return threading.get_ident()

    assert whoami() == threading.get_ident()
    assert whoami.submit().result(WAIT) != threading.get_ident()
    assert queue.stats().submitted == 1


@pytest.mark.timeout(30)
def test_on_a_real_queue_a_dead_letter_carries_the_registered_name(make_queue) -> None:
    queue = make_queue(workers=1)
    registry = Registry(queue.submit)
    function = registry.register(FailTimes(1), name="charge-card")
    handle = function.submit(5)
    with pytest.raises(ValueError):
        handle.result(WAIT)
    [letter] = queue.dead_letters()
    assert letter.task.name == "charge-card"
    assert queue.requeue(letter).result(WAIT) == 5


@pytest.mark.timeout(30)
def test_on_a_real_queue_options_pass_delay_and_key_through(make_queue, gate: Gate) -> None:
    queue = make_queue(workers=1)
    registry = Registry(queue.submit)
    held = registry.register(gate.wait, name="held")
    # A delayed task waits in the scheduler instead of running
    delayed = held.options(delay=60).submit()
    assert delayed.state is TaskState.SCHEDULED
    # A second submission with the same key, while the first is live, is the first
    first = held.options(key="b42").submit()
    assert held.options(key="b42").submit() is first
    gate.wait_for_arrivals(1)
    gate.open()
    assert first.result(WAIT) == "through"
    assert delayed.cancel()


@pytest.mark.timeout(30)
def test_on_a_real_queue_asubmit_goes_through_the_queues_asubmit(make_queue) -> None:
    queue = make_queue(workers=1)
    registry = Registry(queue.submit, asubmit=queue.asubmit)
    function = registry.register(add, name="async-add")

    async def main() -> TaskHandle:
        handle = await function.asubmit(2, y=3)
        assert await asyncio.wrap_future(handle) == 5
        return handle

    handle = asyncio.run(main())
    assert handle.name == "async-add"
    assert queue.stats().submitted == 1
