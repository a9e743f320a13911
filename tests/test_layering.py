"""The direction of imports inside the package (see STYLE.md): lower never imports higher."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Set

import taskqueue

PACKAGE = Path(taskqueue.__file__).parent

# Lower numbers are lower layers; a module may import only from lower layers.
# Modules of the brokers package are named "brokers.x".
LAYERS: Dict[str, int] = {
    "validate": 0, "aio": 0, "process": 0,
    "errors": 1,
    "retry": 2, "stats": 2,
    "task": 3, "message": 4,
    "deadletter": 4, "status": 4, "events": 4, "registry": 4, "mapping": 4, "unique": 4, "journalfile": 5,
    "scheduler": 5, "workqueue": 5, "timelimit": 5, "periodic": 5, "journal": 6, "journalview": 6,
    "brokers.base": 6, "brokers.redis_codec": 6,
    "brokers.memory": 7, "brokers.redis_producer": 7, "brokers.redis_consumer": 7, "brokers.redis_status": 7,
    "brokers.journal": 8, "brokers.redis_scripts": 0, "brokers.redis_connection": 0,
    "brokers.redis": 8,
    "brokers.__init__": 9,
    "settle": 10, "worker": 10,
    "supervisor": 11, "lifecycle": 11,
    "pool": 12,
    "__init__": 13,
}
# The command line, the demo, the dashboard and the metrics collector are
# users: only the package's public names.
USERS = {"cli", "cli_shared", "demo", "demo_redis", "__main__", "metrics",
         "dashboard.__init__", "dashboard.server", "dashboard.sources"}
# TaskQueue.serve_dashboard() is the one way down to a user: it imports the
# dashboard inside the method, only when called.
LAZY_USERS = {"pool": {"dashboard.__init__"}}
# A broker never imports the queue's own parts above it (pool, settle, ...):
# the layers already say so; this names the rule the layers serve.
BROKER_MODULES = {name for name in LAYERS if name.startswith("brokers.")}


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("")
    return ".".join(relative.parts)


def imported_modules(path: Path, *, on_import: bool = False) -> Set[str]:
    """Package modules that ``path`` imports, named as in LAYERS.

    With ``on_import``, only those imported when the module itself is: not
    the imports inside a function, made when it is called.
    """
    here = module_name(path).split(".")[:-1]  # the package the module is in, below taskqueue
    found: Set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text()), skip_functions=on_import):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
                parts = base + (node.module.split(".") if node.module else [])
            elif (node.module or "").startswith("taskqueue"):
                parts = (node.module or "").split(".")[1:]
            else:
                continue
            if not node.module:  # from . import x, y
                for alias in node.names:
                    found.add(_resolve(parts + [alias.name]))
            else:
                found.add(_resolve(parts))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("taskqueue."):
                    found.add(_resolve(alias.name.split(".")[1:]))
    return found


def _runtime_nodes(tree: ast.AST, *, skip_functions: bool = False):
    # Every node but those under "if TYPE_CHECKING:": an import made only for
    # type hints is no dependency at run time (task and message name each other).
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.dump(child.test):
                stack.extend(child.orelse)
                continue
            if skip_functions and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            stack.append(child)


def _resolve(parts: list) -> str:
    # The longest prefix that is a module file; a package stands for its __init__.
    for end in range(len(parts), 0, -1):
        candidate = PACKAGE.joinpath(*parts[:end])
        if candidate.with_suffix(".py").exists():
            return ".".join(parts[:end])
        if (candidate / "__init__.py").exists():
            return ".".join(parts[:end] + ["__init__"]) if parts[:end] else "__init__"
    return "__init__"


def test_every_module_is_placed_in_a_layer() -> None:
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    assert modules == set(LAYERS) | USERS


def _path(name: str) -> Path:
    return PACKAGE.joinpath(*name.split(".")).with_suffix(".py")


def test_imports_only_point_down() -> None:
    for name, layer in LAYERS.items():
        lazy = LAZY_USERS.get(name, set())
        assert not lazy & imported_modules(_path(name), on_import=True), \
            f"{name} imports {lazy} when it is imported"
        for imported in imported_modules(_path(name)) - lazy:
            assert imported in LAYERS, f"{name} imports {imported}, a user module"
            assert LAYERS[imported] < layer, f"{name} (layer {layer}) imports {imported}"


def test_no_broker_imports_the_pool_or_its_parts() -> None:
    above = {"pool", "settle", "worker", "supervisor", "lifecycle", "__init__"}
    for name in BROKER_MODULES:
        imported = imported_modules(PACKAGE.joinpath(*name.split(".")).with_suffix(".py"))
        assert not imported & above, f"{name} imports {imported & above}"


def test_the_cli_and_demo_use_only_public_names() -> None:
    public_modules = {"__init__", "status", "journalview"}  # exported, or whose names are
    for name in USERS:
        for imported in imported_modules(_path(name)):
            assert imported in USERS | public_modules, f"{name} imports taskqueue.{imported}"


def test_the_redis_demo_builds_on_the_demo_and_is_loaded_only_when_asked_for() -> None:
    # demo_redis uses the demo's pieces; the demo (its run_demo, given a
    # broker) imports demo_redis only inside a function, so neither the
    # in-memory demo nor the CLI loads the Redis one.
    assert "demo" in imported_modules(PACKAGE / "demo_redis.py", on_import=True)
    for name in USERS - {"demo_redis"}:
        loaded = imported_modules(_path(name), on_import=True)
        assert "demo_redis" not in loaded, f"importing {name} imports demo_redis"
    assert "demo_redis" in imported_modules(PACKAGE / "demo.py")  # lazily, in run_demo
