"""The import rules of docs/architecture.md, read from every module's imports (ast).

No import cycle; no room imports a room of a higher layer; pure policy modules import no I/O;
only the composition root (and a package's own factory) builds the pieces. That only db/ speaks
SQL is tests/unit/test_named_queries.py.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import npcforge

SRC = Path(npcforge.__file__).parent

# Lowest first. A room is a top-level module or a subpackage of npcforge.
FOUNDATION = {"npcforge", "config", "errors", "exits", "logs", "redaction", "backoff", "npc"}
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", FOUNDATION | {"heap", "metrics", "speedups"}),
    ("adapters", {"db", "storage", "generation", "embedded", "budget"}),
    ("services", {"worker", "api", "importer", "console", "costs"}),
    ("composition", {"compose", "signals"}),
    ("commands", {"daemons", "devmode", "ops", "doctor"}),
    ("entry", {"cli", "__main__"}),
]

# Decisions without I/O: tested without a database, a network or a file.
POLICY = {
    "npcforge.backoff", "npcforge.redaction", "npcforge.npc", "npcforge.errors",
    "npcforge.generation.base",
    "npcforge.generation.tfs", "npcforge.generation.listrules", "npcforge.generation.xmlrules",
    "npcforge.generation.recordcheck", "npcforge.generation.validator",
    "npcforge.generation.stored_xml", "npcforge.generation.prompt",
    "npcforge.generation.answer", "npcforge.generation.completion",
    "npcforge.generation.upstream_errors",
    "npcforge.worker.options",
}  # fmt: skip
IO_MODULES = {
    "asyncio", "asyncpg", "aiohttp", "httpx", "storage3", "uvicorn", "starlette", "socket",
    "subprocess", "os", "shutil", "pathlib", "io", "urllib", "http", "logging",
}  # fmt: skip

# The pieces a process is made of, and the only modules that may build them.
PIECES = {
    "Worker", "create_app", "TemplateProvider", "OpenRouterProvider", "PostgresUpstreamGate",
    "FilesystemStorage", "SupabaseStorage", "NoAuth", "JwtAuthenticator",
}  # fmt: skip
BUILDERS = {"npcforge.compose", "npcforge.storage.factory", "npcforge.api.app"}


def _module_name(path: Path) -> str:
    parts = ["npcforge", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(SRC.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text("utf-8")) for name, path in MODULES.items()}


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Lines of imports under `if TYPE_CHECKING:` (for annotations only, never run)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Name)
            and node.test.id == "TYPE_CHECKING"
        ):
            lines |= {inner.lineno for stmt in node.body for inner in ast.walk(stmt)}
    return lines


def _imports(tree: ast.Module) -> Iterator[str]:
    """Every module named by an import that runs, at the top or inside a function."""
    skip = _type_checking_only(tree)
    for node in ast.walk(tree):
        if node.__dict__.get("lineno") in skip:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _npcforge_imports(name: str) -> set[str]:
    return {target for target in _imports(TREES[name]) if target in MODULES and target != name}


GRAPH = {name: _npcforge_imports(name) for name in MODULES}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _layer(room: str) -> int:
    for index, (_, rooms) in enumerate(LAYERS):
        if room in rooms:
            return index
    raise AssertionError(f"room {room!r} has no layer in LAYERS (and docs/architecture.md)")


def test_every_room_has_a_layer() -> None:
    for module in MODULES:
        _layer(_room(module))


def test_no_import_cycle() -> None:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module)
    assert cycles == []


def test_no_import_from_a_lower_layer_up() -> None:
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if _layer(_room(target)) > _layer(_room(module))
    )
    assert upward == []


def test_policy_modules_do_no_io() -> None:
    found = sorted(
        f"{module} imports {target}"
        for module in POLICY
        for target in _imports(TREES[module])
        if target.split(".")[0] in IO_MODULES
        or (target in MODULES and target not in POLICY and target != "npcforge")
    )
    assert found == []


def test_only_the_composition_root_builds_the_pieces() -> None:
    built = sorted(
        f"{module}:{node.lineno} builds {node.func.id}"
        for module, tree in TREES.items()
        if module not in BUILDERS
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in PIECES
    )
    assert built == []


def test_the_rules_see_what_they_check() -> None:
    # The parse found the known arrows (a broken walk would pass every rule above).
    assert "npcforge.compose" in GRAPH["npcforge.daemons"]
    assert "npcforge.worker.daemon" in GRAPH["npcforge.compose"]
    assert "npcforge.api.app" in GRAPH["npcforge.compose"]  # a lazy import counts too
    assert all(module in MODULES for module in POLICY)
