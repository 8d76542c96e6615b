"""The shape of the package: which module may import which, and who reads the facade's state.

asyncbind's modules are read with :mod:`ast`, never imported, so these checks see every import
(module level, inside functions, under ``if TYPE_CHECKING:``) whatever is installed. An import is

- *eager* when it runs as its module is imported (module level, ``if`` and ``try`` included),
- *deferred* when it runs when a function is called (inside a ``def``),
- *typing* when it sits under ``if TYPE_CHECKING:`` and never runs.

Eager and deferred imports are run-time arrows between modules; typing imports are not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "asyncbind"
FACADE = "asyncbind.core"
INTEGRATIONS = "asyncbind.integrations"
#: Web frameworks and job queues (and what only they bring in), which only
#: asyncbind.integrations.* may import.
FRAMEWORKS = frozenset(
    {"quart", "starlette", "fastapi", "flask", "werkzeug", "httpx", "anyio", "arq", "redis"}
)


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the module imported (an asyncbind module, or a third-party top-level name)
    line: int
    kind: str  # "eager", "deferred" or "typing"
    path: str = ""  # the importing module's file, from the repository root

    def __str__(self) -> str:
        return f"{self.module} -> {self.target} ({self.path}:{self.line}, {self.kind})"


def _path(path: Path, package: Path) -> str:
    return path.relative_to(package.parent).as_posix()


def _modules(package: Path) -> dict[str, Path]:
    """Every module of the package by dotted name; a package is named by its __init__.py."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, kind: str) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement under ``node``, with its kind."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, kind
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for statement in child.body:
                yield from _walk(ast.Module(body=[statement], type_ignores=[]), "typing")
            for statement in child.orelse:
                yield from _walk(ast.Module(body=[statement], type_ignores=[]), kind)
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _walk(child, "typing" if kind == "typing" else "deferred")
        else:
            yield from _walk(child, kind)


def _imports(package: Path = PACKAGE) -> list[Import]:
    modules = _modules(package)
    found = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node, kind in _walk(tree, "eager"):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif node.level == 0:
                base = node.module or ""
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            else:
                parts = name.split(".")
                anchor = parts if is_package else parts[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
                # ``from . import x`` imports the submodule x if there is one, else a name of base.
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            for target in targets:
                if target.split(".")[0] != "asyncbind":
                    target = target.split(".")[0]
                elif target not in modules:  # ``import asyncbind.x.y`` of a name: its module
                    while target not in modules:
                        target = target.rpartition(".")[0]
                if target != "__future__":
                    found.append(Import(name, target, node.lineno, kind, _path(path, package)))
    return found


def _graph(imports: list[Import], kinds: set[str]) -> dict[str, list[Import]]:
    graph: dict[str, list[Import]] = {}
    for imp in imports:
        if imp.kind in kinds and imp.target.startswith("asyncbind") and imp.target != imp.module:
            graph.setdefault(imp.module, []).append(imp)
    return graph


def _cycles(graph: dict[str, list[Import]]) -> list[list[Import]]:
    """One import cycle through each module that is on one, as the imports that make it."""
    cycles: list[list[Import]] = []
    seen_on_cycle: set[str] = set()
    for start in sorted(graph):
        if start in seen_on_cycle:
            continue
        # Breadth-first from start: the shortest path of imports back to start, if any.
        paths: dict[str, list[Import]] = {start: []}
        queue = [start]
        cycle = None
        while queue and cycle is None:
            module = queue.pop(0)
            for imp in graph.get(module, []):
                if imp.target == start:
                    cycle = [*paths[module], imp]
                    break
                if imp.target not in paths:
                    paths[imp.target] = [*paths[module], imp]
                    queue.append(imp.target)
        if cycle is not None:
            cycles.append(cycle)
            seen_on_cycle.update(imp.module for imp in cycle)
    return cycles


def _closure(graph: dict[str, list[Import]], start: str) -> dict[str, list[Import]]:
    """Every module that importing ``start`` runs, with the chain of imports that gets there."""
    chains: dict[str, list[Import]] = {start: []}
    queue = [start]
    while queue:
        module = queue.pop(0)
        for imp in graph.get(module, []):
            if imp.target not in chains:
                chains[imp.target] = [*chains[module], imp]
                queue.append(imp.target)
    return chains


def _chain(imports: list[Import]) -> str:
    return "\n    ".join(str(imp) for imp in imports)


def runtime_cycles(package: Path = PACKAGE) -> list[str]:
    graph = _graph(_imports(package), {"eager", "deferred"})
    return [_chain(cycle) for cycle in _cycles(graph)]


def facade_imports_of_integrations(package: Path = PACKAGE) -> list[str]:
    imports = _imports(package)
    chains = _closure(_graph(imports, {"eager", "deferred"}), FACADE)
    return [
        _chain([*chains[imp.module], imp])
        for imp in imports
        if imp.module in chains
        and (imp.target == INTEGRATIONS or imp.target.startswith(INTEGRATIONS + "."))
    ]


def framework_imports_of_import_asyncbind(package: Path = PACKAGE) -> list[str]:
    imports = _imports(package)
    chains = _closure(_graph(imports, {"eager"}), "asyncbind")
    return [
        _chain([*chains[imp.module], imp])
        for imp in imports
        if imp.kind == "eager" and imp.module in chains and imp.target in FRAMEWORKS
    ]


def _facade_private_names(package: Path) -> set[str]:
    """The private attributes and methods of AsyncBind: ``self._x`` it sets and ``def _x``."""
    tree = ast.parse((package / "core.py").read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "AsyncBind")
    names = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        ):
            names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.endswith("__")}


def private_reads_of_the_facade(package: Path = PACKAGE) -> list[str]:
    """Uses of an AsyncBind private name (``db._configs``, ``self._db._binds``, ...) outside
    core.py. ``self._x`` and ``cls._x`` are a class's own attributes and are not counted, so a
    class elsewhere may have a private attribute of the same name."""
    private = _facade_private_names(package)
    found = []
    for name, path in _modules(package).items():
        if name == FACADE:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in private
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                found.append(f"{_path(path, package)}:{node.lineno}: {ast.unparse(node)}")
    return found


def _report(problems: list[str]) -> str:
    return "\n  " + "\n  ".join(problems)


def test_the_checks_see_the_package() -> None:
    imports = _imports()
    quart = "asyncbind/integrations/quart.py"
    assert Import("asyncbind.integrations.quart", "quart", 27, "eager", quart) in imports
    assert any(i.module == FACADE and i.target == "asyncbind.routing" for i in imports)
    assert {"_binds", "_install"} <= _facade_private_names(PACKAGE)
    # Counting imports that never run, bulk.py and core.py import each other (bulk names
    # AsyncBind in its annotations): the cycle finder finds that one.
    with_typing = _cycles(_graph(imports, {"eager", "deferred", "typing"}))
    assert any({"asyncbind.bulk", FACADE} <= {i.module for i in cycle} for cycle in with_typing)


def test_no_import_cycle_at_run_time() -> None:
    """Modules form layers: no module imports, directly or not, one that imports it back (imports
    under TYPE_CHECKING excepted: they never run)."""
    cycles = runtime_cycles()
    assert not cycles, "Import cycles (break each by moving what both need lower):" + _report(
        cycles
    )


def test_the_facade_imports_no_integration() -> None:
    """Integrations import the facade, never the reverse: core.py and every module it imports
    run without asyncbind.integrations. ``db.init_app`` reaches the Quart integration through
    ``asyncbind.core.add_app_setup``, with which the integration registers itself."""
    found = facade_imports_of_integrations()
    assert not found, (
        "core.py, or a module it imports, imports an integration (register the integration's "
        "setup with asyncbind.core.add_app_setup instead):" + _report(found)
    )


def test_nothing_outside_the_facade_reads_its_private_state() -> None:
    """What other modules need of an AsyncBind has a public name (``db.bind_configs``,
    ``db.engine_options``, ``db.record_queries``, ``db.engines``, ``db.metadatas``, ...)."""
    found = private_reads_of_the_facade()
    assert not found, (
        "These read private attributes of AsyncBind outside core.py; give what they need a "
        "public name in core.py:" + _report(found)
    )


def test_import_asyncbind_imports_no_framework() -> None:
    """Only asyncbind.integrations.* import a web framework, and ``import asyncbind`` does not
    import those (the Quart integration is imported by the first ``init_app`` of a Quart app)."""
    found = framework_imports_of_import_asyncbind()
    assert not found, "'import asyncbind' imports a web framework:" + _report(found)
    outside = [
        str(imp)
        for imp in _imports()
        if imp.target in FRAMEWORKS
        and imp.kind != "typing"
        and not imp.module.startswith(INTEGRATIONS + ".")
    ]
    assert not outside, "Only asyncbind.integrations.* may import a framework:" + _report(outside)


#: The layers of the README's Architecture section, top first: a module imports (at run time)
#: only from its own layer and those above it. The package's __init__ re-exports everything.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("ground", frozenset({"exceptions", "config", "urls"})),
    (
        "engines",
        frozenset(
            {
                "internals",
                "causes",
                "connector",
                "timeouts",
                "stopping",
                "directddl",
                "savepoints",
                "closing",
                "loops",
                "cancellation",
                "checkin",
                "readonly",
                "pgbouncer",
                "registry",
                "engines",
                "retiring",
            }
        ),
    ),
    ("models", frozenset({"models", "schema"})),
    (
        "sessions",
        frozenset(
            {
                "routing",
                "replicas",
                "commits",
                "twophase",
                "tasksafety",
                "views",
                "pagination",
                "web",
                "recording",
                "scoping",
                "tenants",
            }
        ),
    ),
    ("data", frozenset({"bulk", "reading", "values", "health", "otel"})),
    ("facade", frozenset({"core"})),
    (
        "outside",
        frozenset(
            {
                "integrations",
                "testing",
                "cli",
                "findapp",
                "copyprogress",
                "demo",
                "migrations",
                "templates",
                "__main__",
            }
        ),
    ),
)


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "asyncbind" or len(parts) < 2:
        return None  # the package itself, or not asyncbind's
    for number, (_, names) in enumerate(LAYERS):
        if parts[1] in names:
            return number
    raise AssertionError(f"{module} is in no layer of LAYERS (and of the README's table)")


def test_every_module_is_in_a_layer() -> None:
    for name in _modules(PACKAGE):
        _layer(name)


def test_modules_import_only_their_own_layer_and_those_above() -> None:
    problems = []
    for found in _imports():
        if found.kind == "typing":
            continue
        mine, theirs = _layer(found.module), _layer(found.target)
        if mine is not None and theirs is not None and theirs > mine:
            problems.append(f"{found} ({LAYERS[mine][0]} imports {LAYERS[theirs][0]})")
    assert not problems, "imports running down the layers:" + _report(problems)


def test_the_readme_lists_the_layers() -> None:
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme[readme.index("## Architecture") : readme.index("## Performance")]
    for _, names in LAYERS:
        for name in names - {"__main__"}:
            shown = "integrations/" if name == "integrations" else f"`{name}`"
            assert shown in section, f"the README's Architecture table does not show {name}"


def test_no_generated_code_and_no_frame_reading() -> None:
    """No exec, no generated source, no reading of other functions' frames or locals."""
    banned = ("exec(", "eval(", "f_locals", "cr_frame", "f_code", "linecache", "_getframe")
    found = [
        f"{_path(path, PACKAGE)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if any(word in line for word in banned)
    ]
    assert not found, "generated code or frame reading:" + _report(found)
