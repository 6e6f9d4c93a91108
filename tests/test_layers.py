"""The layers of ``DESIGN.md`` ("Package layout"), kept true by reading every module's imports.

The import graph is read from the source (``ast``), deferred imports inside functions included and
``if TYPE_CHECKING:`` blocks left out (a type-only back-reference never runs). Then:

- no runtime import cycle;
- each capability imports only the core and the capabilities below it, and one beside it only through that
  package's ``__init__``;
- no underscore name (module or attribute) crosses a package boundary;
- ``gunicorn`` is imported only by ``wsgiplus/gunicorn.py``, Flask's and Werkzeug's private names only by
  ``wsgiplus/views.py``;
- importing one capability loads no other, checked in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import flask_queue

SRC = Path(flask_queue.__file__).parent
ROOT = "flask_queue"

#: The layer of each top-level part of the package: a module may import its own part, and lower layers.
LAYERS = {
    **dict.fromkeys(["__init__", "exceptions", "signals", "_types", "_keys", "_checks"], 0),
    **dict.fromkeys(["wsgiplus", "commit_hooks"], 1),
    **dict.fromkeys(["request_queue", "tasks"], 2),
    **dict.fromkeys(["dashboard", "contrib", "tasks.testing"], 3),
}
#: Modules any layer may use: the core.
CORE = {name for name, layer in LAYERS.items() if layer == 0}
#: A name of Flask or Werkzeug that starts with an underscore but is documented API.
PUBLIC_UNDERSCORE = {"_get_current_object"}


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # the flask_queue module imported, or the third-party module
    names: tuple[str, ...]  # the names taken from it (``from x import a, b``)
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(SRC.rglob("*.py"))}


def is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def runtime_imports(module: str) -> Iterator[Import]:
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    package = module if is_package(module) else module.rpartition(".")[0]

    def visit(node: ast.AST) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                yield from (i for stmt in child.orelse for i in visit_stmt(stmt))
                continue
            yield from visit_stmt(child)

    def visit_stmt(node: ast.AST) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, (), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.module == "__future__":
                return
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            names = tuple(alias.name for alias in node.names)
            submodules = [name for name in names if f"{base}.{name}" in MODULES]
            for name in submodules:  # ``from . import lane``: the module itself
                yield Import(module, f"{base}.{name}", (), node.lineno)
            others = tuple(name for name in names if name not in submodules)
            if others or not submodules:
                yield Import(module, base, others, node.lineno)
        else:
            yield from visit(node)

    yield from visit(tree)


IMPORTS = [i for module in MODULES for i in runtime_imports(module)]
INTERNAL = [i for i in IMPORTS if i.target == ROOT or i.target.startswith(ROOT + ".")]


def part(module: str) -> str:
    """The top-level part of the package a module belongs to (``tasks``, ``_keys``...)."""
    rest = module.removeprefix(ROOT).lstrip(".").split(".")
    if rest[:2] == ["tasks", "testing"]:
        return "tasks.testing"
    if rest == ["gunicorn"]:  # the three-line alias of the worker, under the name users type
        return "wsgiplus"
    return rest[0] or "__init__"


def describe(i: Import) -> str:
    return f"{i.importer} (line {i.line}) imports {i.target}{' ' + ', '.join(i.names) if i.names else ''}"


def test_every_module_is_read() -> None:
    assert "flask_queue.request_queue.middleware" in MODULES
    assert any(
        i.importer == "flask_queue.tasks.queue" and i.target == "flask_queue.tasks.cli" for i in INTERNAL
    ), "the deferred import of the CLI in TaskQueue.init_app is seen"


def test_no_runtime_import_cycle() -> None:
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for i in INTERNAL:
        graph[i.importer].add(i.target)
    # Tarjan's strongly connected components; any of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            connect(node)
    assert not cycles, f"import cycles: {cycles}"


def test_each_layer_imports_only_below_it_or_beside_it_through_init() -> None:
    wrong = []
    for i in INTERNAL:
        source, target = part(i.importer), part(i.target)
        if source == target or target in CORE:
            continue
        if LAYERS[target] > LAYERS[source]:
            wrong.append(f"{describe(i)}: {target} is above {source}")
        elif LAYERS[target] == LAYERS[source] and i.target != f"{ROOT}.{target}":
            wrong.append(f"{describe(i)}: {target} is beside {source}; import it from flask_queue.{target}")
    assert not wrong, "\n".join(wrong)


def test_no_private_name_crosses_a_package_boundary() -> None:
    wrong = []
    for i in INTERNAL:
        if part(i.importer) == part(i.target) or part(i.target) in CORE:
            continue
        inner = i.target.removeprefix(f"{ROOT}.{part(i.target)}")
        private_module = any(piece.startswith("_") for piece in inner.split(".") if piece)
        private_names = [name for name in i.names if name.startswith("_")]
        if private_module or private_names:
            wrong.append(describe(i))
    assert not wrong, "\n".join(wrong)


def test_gunicorn_is_imported_only_by_the_worker_module() -> None:
    users = {i.importer for i in IMPORTS if i.target == "gunicorn" or i.target.startswith("gunicorn.")}
    assert users == {"flask_queue.wsgiplus.gunicorn"}


def test_flask_private_names_are_used_only_in_wsgiplus_views() -> None:
    wrong = []
    for i in IMPORTS:
        if i.target.split(".")[0] not in {"flask", "werkzeug"}:
            continue
        private = [name for name in i.names if name.startswith("_") and name not in PUBLIC_UNDERSCORE]
        if any(piece.startswith("_") for piece in i.target.split(".")) or private:
            wrong.append(describe(i))
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and node.attr not in PUBLIC_UNDERSCORE
                and ast.unparse(node.value).split(".")[0] in {"flask", "werkzeug"}
            ):
                wrong.append(f"{module} (line {node.lineno}) uses {ast.unparse(node)}")
    outside = [entry for entry in wrong if not entry.startswith("flask_queue.wsgiplus.views ")]
    assert not outside, "\n".join(outside)
    assert wrong, "wsgiplus.views is expected to be the one module that uses Flask's dispatch internals"


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("flask_queue", ["flask_queue.request_queue", "flask_queue.tasks", "flask_queue.dashboard"]),
        (
            "flask_queue.request_queue",
            ["flask_queue.tasks", "flask_queue.dashboard", "flask_queue.commit_hooks"],
        ),
        ("flask_queue.tasks", ["flask_queue.request_queue", "flask_queue.dashboard", "flask_queue.wsgiplus"]),
        ("flask_queue.wsgiplus", ["flask_queue.request_queue", "flask_queue.tasks", "flask_queue.dashboard"]),
        (
            "flask_queue.commit_hooks",
            ["flask_queue.request_queue", "flask_queue.tasks", "flask_queue.wsgiplus"],
        ),
    ],
)
def test_importing_one_capability_loads_no_other(module: str, absent: list[str]) -> None:
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('flask_queue')))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert not [name for name in absent if f"'{name}'" in loaded], loaded
