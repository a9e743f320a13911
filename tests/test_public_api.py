"""The public surface: every exported name imports, is documented and typed."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import taskqueue

PACKAGE = Path(taskqueue.__file__).parent


@pytest.mark.parametrize("name", taskqueue.__all__)
def test_every_public_name_imports_and_has_a_docstring(name: str) -> None:
    obj = getattr(taskqueue, name)
    assert inspect.getdoc(obj), f"{name} has no docstring"


@pytest.mark.parametrize("name", [n for n in taskqueue.__all__ if inspect.isclass(getattr(taskqueue, n))])
def test_every_public_method_has_a_docstring(name: str) -> None:
    cls = getattr(taskqueue, name)
    for attr, value in vars(cls).items():
        if attr.startswith("_") or not (inspect.isfunction(value) or isinstance(value, (property, classmethod))):
            continue
        assert inspect.getdoc(getattr(cls, attr)), f"{name}.{attr} has no docstring"


def test_the_package_is_typed_and_has_a_version() -> None:
    assert (PACKAGE / "py.typed").exists()
    assert isinstance(taskqueue.__version__, str) and taskqueue.__version__[0].isdigit()


def test_executor_and_future_compatibility() -> None:
    import concurrent.futures as cf

    assert issubclass(taskqueue.TaskQueue, cf.Executor)
    assert issubclass(taskqueue.TaskHandle, cf.Future)
    assert issubclass(taskqueue.QueueClosed, RuntimeError)
    assert issubclass(taskqueue.QueueClosed, taskqueue.TaskQueueError)
    assert issubclass(taskqueue.QueueFull, taskqueue.TaskQueueError)
    assert [s.name for s in taskqueue.TaskState] == [
        "PENDING", "SCHEDULED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]


def test_the_documented_signatures() -> None:
    params = inspect.signature(taskqueue.TaskQueue).parameters
    assert list(params)[:2] == ["workers", "maxsize"]
    assert params["workers"].default == 4 and params["maxsize"].default == 1024
    for name, default in [("name", None), ("retries", 0), ("backoff", None),
                          ("retry_on", (Exception,)), ("submit_timeout", None),
                          ("dead_letter_limit", 10_000), ("max_workers", None),
                          ("thread_name_prefix", None), ("initializer", None),
                          ("initargs", ()), ("broker", None), ("wait", None)]:
        assert params[name].default == default and params[name].kind is inspect.Parameter.KEYWORD_ONLY
    submit = inspect.signature(taskqueue.TaskQueue.submit).parameters
    assert submit["fn"].kind is inspect.Parameter.POSITIONAL_ONLY
    shutdown = inspect.signature(taskqueue.TaskQueue.shutdown).parameters
    assert shutdown["wait"].default is True
    assert shutdown["cancel_futures"].kind is inspect.Parameter.KEYWORD_ONLY
    assert shutdown["timeout"].kind is inspect.Parameter.KEYWORD_ONLY
    backoff = taskqueue.Backoff()
    assert (backoff.base, backoff.factor, backoff.max, backoff.jitter) == (0.1, 2.0, 30.0, True)


def test_every_subpackage_is_in_the_built_package() -> None:
    # An install (not editable) ships what setup.cfg lists: a subpackage
    # left out of it installs a taskqueue that cannot be imported.
    import configparser
    import fnmatch

    config = configparser.ConfigParser()
    config.read(PACKAGE.parent / "setup.cfg")
    assert config["options"]["packages"].strip() == "find:"
    patterns = config["options.packages.find"]["include"].replace(",", " ").split()
    for init in PACKAGE.rglob("__init__.py"):
        name = ".".join(init.parent.relative_to(PACKAGE.parent).parts)
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
