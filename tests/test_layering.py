"""The direction of imports inside the package (see STYLE.md): lower never imports higher."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Set

import taskqueue

PACKAGE = Path(taskqueue.__file__).parent

# Lower numbers are lower layers; a module may import only from lower layers.
LAYERS: Dict[str, int] = {
    "validate": 0, "aio": 0, "process": 0,
    "errors": 1,
    "retry": 2, "stats": 2,
    "task": 3,
    "deadletter": 4, "events": 4, "registry": 4, "mapping": 4, "unique": 4,
    "journalfile": 4,
    "scheduler": 5, "workqueue": 5, "timelimit": 5, "periodic": 5, "journal": 5,
    "worker": 6, "durable": 6,
    "pool": 7,
    "__init__": 8,
}
# The command line and the demo are users: only the package's public names.
USERS = {"cli", "demo", "__main__"}


def imported_modules(path: Path) -> Set[str]:
    """Sibling modules that ``path`` imports (relative or as taskqueue.x)."""
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1 and not module:  # from . import x, y
                found.update(a.name if (PACKAGE / f"{a.name}.py").exists() else "__init__"
                             for a in node.names)
            elif node.level == 1:
                found.add(module.split(".")[0])
            elif module.startswith("taskqueue"):
                parts = module.split(".")
                found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("taskqueue."):
                    found.add(alias.name.split(".")[1])
    return found


def test_every_module_is_placed_in_a_layer() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules == set(LAYERS) | USERS


def test_imports_only_point_down() -> None:
    for name, layer in LAYERS.items():
        for imported in imported_modules(PACKAGE / f"{name}.py"):
            assert imported in LAYERS, f"{name} imports {imported}, a user module"
            assert LAYERS[imported] < layer, f"{name} (layer {layer}) imports {imported}"


def test_the_cli_and_demo_use_only_public_names() -> None:
    for name in USERS:
        for imported in imported_modules(PACKAGE / f"{name}.py"):
            assert imported in USERS | {"__init__"}, f"{name} imports taskqueue.{imported}"
