"""The package's import graph has no cycle and no upward edge.

Every module of opus_runner is parsed (not imported); every import is an edge: at the top, inside
functions (imported late for start-up time, still a dependency) and under ``TYPE_CHECKING``
(a type a module names is a module it depends on), and ``importlib.import_module("a.b")``.
A module may import its own layer and the layers below it, never one above; the sandbox stands
apart (below). A module that fits no layer fails the test until it is given one.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "opus_runner"
ROOT = "opus_runner"

#: Top to bottom. A name covers the module and, for a package, every module inside it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # What a user calls: the public facade (opus_runner/__init__.py: run, Runner, load_spec...),
    # the command line, the pytest plugin.
    ("entry points", (ROOT, "opus_runner.__main__", "opus_runner.cli", "opus_runner.testing")),
    # Runs on a durable engine (Temporal): they drive the run engine's parts from activities.
    ("durable engines", ("opus_runner.temporal",)),
    ("engine", ("opus_runner.engine",)),
    # What the run drives: the HTTP client and the plugin host with its built-in plugins.
    ("api and plugins", ("opus_runner.api", "opus_runner.client", "opus_runner.plugins", "opus_runner.hookspecs", "opus_runner.builtins", "opus_runner.callbacks")),
    # Specs, their planning and payloads, and the files a run reads and writes (project file,
    # lock, journal) and prints (progress). authoring.py is here, not higher: it only computes
    # from schemas and specs, so it must not reach the runner or the client.
    (
        "specs and state",
        (
            "opus_runner.spec",
            "opus_runner.planning",
            "opus_runner.templating",
            "opus_runner.payload",
            "opus_runner.workflow",
            "opus_runner.config",
            "opus_runner.lockfile",
            "opus_runner.state",
            "opus_runner.progress",
            "opus_runner.results",
            "opus_runner.authoring",
            # reports of a run: they read the journal and render it, nothing more
            "opus_runner.reports",
        ),
    ),
    (
        "base",
        (
            "opus_runner.models",
            "opus_runner.errors",
            "opus_runner.redact",
            "opus_runner.paths",
            "opus_runner.files",
            "opus_runner.durations",
            "opus_runner.jsontext",
            "opus_runner.urls",
            "opus_runner.messages",
            # serves an ASGI app in a thread: the sandbox and the callback receiver
            "opus_runner.asgiserver",
            # callback tokens and receiver addresses (stdlib): the planner checks the settings
            "opus_runner.callbacks.tokens",
            # the table of input types: models names the types from it, and it needs only messages
            "opus_runner.inputs",
            "opus_runner.__about__",
        ),
    ),
]

#: The Opus-compatible server: it imports only the base layer and itself, and only the entry
#: points and the run (which starts it for --sandbox) import it.
SANDBOX = "opus_runner.sandbox"
SANDBOX_USERS = ("entry points", "engine")

#: Edges allowed against the rules above, each with why. They are also left out of the cycle
#: search, so an entry here must not hide a cycle it does not explain.
EXCEPTIONS: dict[tuple[str, str], str] = {
    # project_root_of() falls back to the project file's root for an output handler called
    # outside a run (no ctx.root), which needs config's root discovery; config imports paths
    # back for display_path(). Both imports are inside functions. To remove: have every caller
    # pass the root (a run always sets ctx.root), or move find_git_root below config.
    ("opus_runner.paths", "opus_runner.config"): "project root fallback outside a run",
    # The sandbox's workflows file is read with the spec's YAML/JSON loader (spec.load_data),
    # so its errors are worded like a spec's. load_data itself needs only the base layer; moving
    # it there (files.py) removes this.
    ("opus_runner.sandbox.fixture", "opus_runner.spec"): "the shared YAML/JSON data loader",
    # A type only (under TYPE_CHECKING): payload's coercion is handed the PluginHost to call the
    # coercion hooks through; it never imports plugins at run time.
    ("opus_runner.payload", "opus_runner.plugins"): "annotation of the host payload coercion is given",
}


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.importer} imports {self.imported}"


def module_files(package_dir: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package), for every module under ``package_dir``."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = (path, is_package)
    return modules


def _known(name: str, modules: dict[str, tuple[Path, bool]]) -> str | None:
    """The module ``name`` is in: itself, or the nearest enclosing one (``a.b.func`` -> ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _import_module_target(node: ast.Call) -> str | None:
    """The module of ``importlib.import_module("a.b")`` when it is a literal absolute name (the
    computed ones of the lazy facades mirror imports under TYPE_CHECKING, which are counted)."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name != "import_module" or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str) and not first.value.startswith("."):
        return first.value
    return None


def import_edges(package_dir: Path) -> list[Edge]:
    """Every import of one module of the package by another, with where it is written."""
    modules = module_files(package_dir)
    root = package_dir.parent
    edges = []
    for module, (path, is_package) in modules.items():
        package = module if is_package else module.rpartition(".")[0]
        targets: list[tuple[str, int]] = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets += [(alias.name, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # `from . import redact` is an edge to the submodule, not to the package's __init__.
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append((full if full in modules else base, node.lineno))
            elif isinstance(node, ast.Call):
                target = _import_module_target(node)
                if target:
                    targets.append((target, node.lineno))
        for target, line in targets:
            imported = _known(target, modules) if target.split(".")[0] == package_dir.name else None
            if imported and imported != module:
                edges.append(Edge(module, imported, str(path.relative_to(root)), line))
    return edges


def layer_of(module: str) -> str | None:
    """The layer ``module`` belongs to: that of the longest name in LAYERS covering it."""
    best: tuple[int, str] | None = None
    for layer, names in LAYERS:
        for name in names:
            # The package's own name covers only its __init__ (the facade), not everything.
            covers = module == name or (name != ROOT and module.startswith(name + "."))
            if covers and (best is None or len(name) > best[0]):
                best = (len(name), layer)
    return best[1] if best else None


def _in_sandbox(module: str) -> bool:
    return module == SANDBOX or module.startswith(SANDBOX + ".")


def rule_breaks(edges: Iterable[Edge]) -> list[str]:
    """The edges that go up a layer or cross the sandbox's border, in words."""
    rank = {layer: i for i, (layer, _names) in enumerate(LAYERS)}
    problems = []
    for edge in edges:
        if (edge.importer, edge.imported) in EXCEPTIONS:
            continue
        if _in_sandbox(edge.importer):
            if not _in_sandbox(edge.imported) and layer_of(edge.imported) != "base":
                problems.append(f"{edge}: the sandbox imports only the base layer and itself")
            continue
        if _in_sandbox(edge.imported):
            if layer_of(edge.importer) not in SANDBOX_USERS:
                problems.append(f"{edge}: only the layers {', '.join(SANDBOX_USERS)} import the sandbox")
            continue
        low, high = layer_of(edge.importer), layer_of(edge.imported)
        if low is None or high is None:
            continue  # reported by test_every_module_has_a_layer
        if rank[high] < rank[low]:
            problems.append(f"{edge}: upward, from layer {low!r} to layer {high!r}")
    return problems


def cycles(edges: Iterable[Edge]) -> list[list[Edge]]:
    """One cycle (as the edges that close it) per strongly connected group of modules."""
    graph: dict[str, dict[str, Edge]] = {}
    for edge in edges:
        if (edge.importer, edge.imported) not in EXCEPTIONS:
            graph.setdefault(edge.importer, {}).setdefault(edge.imported, edge)
    # Tarjan's algorithm, iteratively (no recursion limit on a deep chain).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    found = []
    for group in groups:
        members = set(group)
        # Walk from the group's first module inside the group until a module repeats.
        path = [group[0]]
        while True:
            following = next(m for m in sorted(graph[path[-1]]) if m in members)
            if following in path:
                path = path[path.index(following):] + [following]
                break
            path.append(following)
        found.append([graph[a][b] for a, b in zip(path, path[1:])])
    return found


# -- the package -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def package_edges() -> list[Edge]:
    return import_edges(PACKAGE_DIR)


def test_the_walk_sees_every_kind_of_import(package_edges: list[Edge]) -> None:
    pairs = {(e.importer, e.imported) for e in package_edges}
    assert ("opus_runner.cli.app", "opus_runner.cli.run") in pairs  # from . import run
    assert ("opus_runner.cli.run", "opus_runner.engine") in pairs  # inside a function
    assert ("opus_runner.payload", "opus_runner.plugins") in pairs  # under TYPE_CHECKING
    assert ("opus_runner.plugins", "opus_runner.builtins") in pairs  # importlib.import_module
    assert ("opus_runner.progress", "opus_runner") not in pairs  # `from . import redact` is redact


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in module_files(PACKAGE_DIR) if not _in_sandbox(m) and layer_of(m) is None]
    assert not unplaced, f"add these modules to a layer of LAYERS in {Path(__file__).name}: {unplaced}"


def test_exceptions_are_still_needed(package_edges: list[Edge]) -> None:
    pairs = {(e.importer, e.imported) for e in package_edges}
    stale = [pair for pair in EXCEPTIONS if pair not in pairs]
    assert not stale, f"these imports are gone; remove them from EXCEPTIONS: {stale}"


def test_no_import_goes_up_a_layer(package_edges: list[Edge]) -> None:
    problems = rule_breaks(package_edges)
    assert not problems, "imports against the layers:\n" + "\n".join(problems)


def test_the_import_graph_has_no_cycle(package_edges: list[Edge]) -> None:
    found = cycles(package_edges)
    assert not found, "import cycles:\n" + "\n\n".join("\n".join(map(str, cycle)) for cycle in found)


# -- the checker itself, on a made-up package ----------------------------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    package_dir = tmp_path / "opus_runner"
    for name, text in files.items():
        path = package_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return package_dir


def test_a_cycle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    package_dir = _package(
        tmp_path,
        {
            "__init__.py": "",
            "cli/__init__.py": "from .app import main\n",
            "cli/app.py": "from . import run\n",
            "cli/run.py": "def command():\n    from .app import main\n",
        },
    )
    found = cycles(import_edges(package_dir))
    assert [[(e.importer, e.imported) for e in cycle] for cycle in found] == [
        [("opus_runner.cli.app", "opus_runner.cli.run"), ("opus_runner.cli.run", "opus_runner.cli.app")]
    ]
    assert found[0][1].file == "opus_runner/cli/run.py" and found[0][1].line == 2


def test_an_upward_edge_and_a_sandbox_crossing_are_found(tmp_path: Path) -> None:
    package_dir = _package(
        tmp_path,
        {
            "__init__.py": "",
            "models.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .engine import Runner\n",
            "engine.py": "from . import models\n",
            "spec.py": "from .sandbox import app\n",
            "sandbox/__init__.py": "",
            "sandbox/app.py": "from ..client import OpusClient\nfrom ..errors import SpecError\nfrom . import faults\n",
            "sandbox/faults.py": "",
            "client.py": "",
            "errors.py": "",
        },
    )
    problems = rule_breaks(import_edges(package_dir))
    assert problems == [
        "opus_runner/models.py:3: opus_runner.models imports opus_runner.engine: upward, from layer 'base' to layer 'engine'",
        "opus_runner/sandbox/app.py:1: opus_runner.sandbox.app imports opus_runner.client: the sandbox imports only the base layer and itself",
        "opus_runner/spec.py:1: opus_runner.spec imports opus_runner.sandbox.app: only the layers entry points, engine import the sandbox",
    ]
