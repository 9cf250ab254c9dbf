"""The shape of engine/, read from its source with `ast`: layers, a pure core, no cycle, sizes.

Rules (docs: /work/shared/STYLE.md, "Shape"):
- Layers, lowest first (`LAYERS`). A module imports its own unit (engine.files imports
  engine.files.*) and units of lower layers only: never a higher layer, never a sibling
  of its own layer (files and net, multiproc and load and distributed do not import
  each other). engine.report and engine.mock use engine.core only; engine.core imports
  engine.core only (engine/errors.py re-exports engine/core/errors.py, not the reverse).
  An exception is written in `EXCEPTIONS` with its reason, never hidden.
- Every import counts: at the top of a module or inside a function (a lazy import is
  still an arrow); only those under `if TYPE_CHECKING:` are left out, they run never.
- engine.core imports the standard library's pure parts, orjson and itself: no I/O, no
  clock, no concurrency, no process, no network (`IMPURE`). It reads no clock at all:
  time is injected, so `time` is refused too (core imports none today, not even for
  formatting; datetime and email.utils parse timestamps only).
- No import cycle between engine modules, lazy imports included.
- Sizes: no module over 450 lines; at most 3 functions over 60 lines.
- `import engine` loads neither aiohttp nor anyio (the public names load lazily).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "engine"

#: Lowest first; a unit is a package (with everything under it) or a top-level module.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("engine.core",),
    ("engine.errors", "engine.config", "engine.version"),
    ("engine.files", "engine.net", "engine.report", "engine.mock"),
    ("engine.runtime",),
    # observe: the servers that watch a run (/metrics, the dashboard); they read the
    # runtime's Watch, which the drivers feed, and engine.api wires the two.
    ("engine.multiproc", "engine.load", "engine.distributed", "engine.observe"),
    ("engine.api",),
    ("engine.cli",),
    ("engine", "engine.__main__"),
)

#: Units that may import engine.core only, besides themselves.
CORE_ONLY = ("engine.core", "engine.report", "engine.mock")

#: (importing unit, imported unit) -> why the current code needs this arrow. None today.
EXCEPTIONS: dict[tuple[str, str], str] = {}

#: What engine.core may not import: I/O, clocks, concurrency, processes, network.
#: A name covers its submodules ("http" covers http.client).
IMPURE = frozenset(
    {
        "asyncio",
        "concurrent",
        "multiprocessing",
        "threading",
        "_thread",
        "subprocess",
        "signal",
        "selectors",
        "select",
        "socket",
        "socketserver",
        "ssl",
        "http",
        "urllib.request",
        "ftplib",
        "smtplib",
        "time",
        "os",
        "sys",
        "io",
        "pathlib",
        "shutil",
        "tempfile",
        "glob",
        "logging",
    }
)

#: Third-party packages engine.core may import.
CORE_THIRD_PARTY = frozenset({"orjson", "simdjson"})  # simdjson: a pure parser (core/jsoncheck.py)

MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
MAX_LONG_FUNCTIONS = 3


@dataclass(frozen=True, slots=True)
class Import:
    module: str  # the importing module
    target: str  # an engine module (the submodule of `from pkg import sub`), else "pkg.name"
    line: int


@cache
def modules() -> dict[str, Path]:
    """Every module of engine/ by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(ENGINE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if modules()[module].name != "__init__.py":
        package.pop()
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = _resolve(module, node)
    if base.split(".")[0] != "engine":
        return [f"{base}.{alias.name}" for alias in node.names]
    # `from engine.x import y` imports engine.x.y when y is a module, engine.x otherwise.
    return [
        f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules() else base
        for alias in node.names
    ]


@cache
def imports() -> tuple[Import, ...]:
    """Every import of every engine module, lazy ones included, TYPE_CHECKING ones not."""
    found: list[Import] = []
    for module, path in modules().items():
        pending: list[ast.AST] = [ast.parse(path.read_text(encoding="utf-8"))]
        while pending:
            node = pending.pop()
            if isinstance(node, ast.Import | ast.ImportFrom):
                found += [Import(module, t, node.lineno) for t in _targets(module, node)]
            elif isinstance(node, ast.If) and _type_checking(node):
                pending += node.orelse
            else:
                pending += ast.iter_child_nodes(node)
    return tuple(sorted(found, key=lambda i: (i.module, i.line, i.target)))


def unit_of(module: str) -> str | None:
    """The unit (LAYERS entry) a module belongs to: the longest one that contains it."""
    units = [u for layer in LAYERS for u in layer]
    if module in units:
        return module
    inside = [u for u in units if u != "engine" and module.startswith(u + ".")]
    return max(inside, key=len) if inside else None


def layer_of(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def _is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_every_module_has_a_layer() -> None:
    orphans = [m for m in modules() if unit_of(m) is None]
    assert not orphans, f"modules in no layer (add them to LAYERS): {orphans}"


def test_imports_point_down_never_sideways() -> None:
    wrong = []
    for imp in imports():
        if not _is_under(imp.target, "engine"):
            continue
        source, target = unit_of(imp.module), unit_of(imp.target)
        assert source is not None
        assert target is not None, f"{imp.module}:{imp.line} imports unknown {imp.target}"
        if source == target or (source, target) in EXCEPTIONS:
            continue
        if source in CORE_ONLY:
            ok = target == "engine.core"
        else:
            ok = layer_of(target) < layer_of(source)
        if not ok:
            wrong.append(f"{imp.module}:{imp.line} imports {imp.target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_exceptions_are_still_needed() -> None:
    """An exception the code no longer needs goes, or it would hide the next one."""
    used = {(unit_of(i.module), unit_of(i.target)) for i in imports()}
    stale = [pair for pair in EXCEPTIONS if pair not in used]
    assert not stale, f"exceptions no import needs: {stale}"


def test_core_imports_only_pure_stdlib_orjson_and_itself() -> None:
    wrong = []
    for imp in imports():
        if not _is_under(imp.module, "engine.core"):
            continue
        top = imp.target.split(".")[0]
        if top == "engine":
            ok = _is_under(imp.target, "engine.core")
        elif top in sys.stdlib_module_names:
            ok = not any(_is_under(imp.target, name) for name in IMPURE)
        else:
            ok = top in CORE_THIRD_PARTY
        if not ok:
            wrong.append(f"{imp.module}:{imp.line} imports {imp.target}")
    assert not wrong, "impure imports in engine.core:\n" + "\n".join(wrong)


def _cycle_in(component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """One cycle through a strongly connected component, as a path back to its start."""
    start = min(component)
    path, seen = [start], {start}
    while True:
        step = min(n for n in graph[path[-1]] if n in component)
        if step in seen:
            return [*path[path.index(step) :], step]
        path.append(step)
        seen.add(step)


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (the graph is small, recursion would do too)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                found.append(component)
    return found


def test_no_import_cycle() -> None:
    graph: dict[str, set[str]] = {module: set() for module in modules()}
    for imp in imports():
        if imp.target in modules() and imp.target != imp.module:
            graph[imp.module].add(imp.target)
    cycles = [" -> ".join(_cycle_in(c, graph)) for c in _strongly_connected(graph) if len(c) > 1]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_module_over_450_lines() -> None:
    sizes = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in modules().items()}
    big = [f"{m}: {n} lines" for m, n in sizes.items() if n > MAX_MODULE_LINES]
    assert not big, "modules over 450 lines:\n" + "\n".join(big)


def test_at_most_3_functions_over_60_lines() -> None:
    long = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1 if node.end_lineno else 0
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert len(long) <= MAX_LONG_FUNCTIONS, "functions over 60 lines:\n" + "\n".join(long)


def test_import_engine_loads_no_network_stack() -> None:
    code = (
        "import sys, engine\n"
        "print(*sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'anyio')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "", f"import engine loaded: {done.stdout.strip()}"
