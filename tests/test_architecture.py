"""The layers, checked from the code's own imports (every ``import`` node, lazy ones included).

core (``thresher/``) < stages (``curate/``, ``review/``, ``tune/``) < orchestrator (``loop/``) <
CLI modules (``cli.py``, ``*_cli.py``, ``cli_*.py``, ``__main__.py``). A module imports only from
its own layer's package or below; a stage never imports another stage (its CLI included); no
library module imports a CLI module; no import cycles; no ``_private`` name is imported from
another module. docs/architecture.md draws the same picture.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = "thresher"
STAGES = ("curate", "review", "tune")
ORCHESTRATORS = ("loop",)
PACKAGES = (CORE, *STAGES, *ORCHESTRATORS)


@dataclass
class ImportGraph:
    """Module → the project modules it imports, and every ``from M import _name`` taken."""

    modules: dict[str, Path] = field(default_factory=dict)
    edges: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    private: list[tuple[str, str, str]] = field(default_factory=list)


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _known(graph: ImportGraph, name: str) -> str | None:
    """The longest prefix of ``name`` that is a project module (``a.b.c`` → ``a.b``)."""
    while name and name not in graph.modules:
        name = name.rpartition(".")[0]
    return name or None


def _absolute(graph: ImportGraph, module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if graph.modules[module].name != "__init__.py":
        package = package[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def build_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> ImportGraph:
    graph = ImportGraph()
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            graph.modules[module_name(root, path)] = path
    for module, path in graph.modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [(alias.name, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(graph, module, node)
                targets = [
                    (f"{base}.{a.name}", None)
                    if f"{base}.{a.name}" in graph.modules
                    else (base, a.name)
                    for a in node.names
                ]
            else:
                continue
            for target, name in targets:
                known = _known(graph, target)
                if known is None or known == module:
                    continue
                graph.edges[module].add(known)
                if name and name.startswith("_") and not name.startswith("__"):
                    graph.private.append((module, known, name))
    return graph


def layer(module: str) -> str:
    last = module.rsplit(".", 1)[-1]
    if last in ("cli", "__main__") or last.endswith("_cli") or last.startswith("cli_"):
        return "cli"
    top = module.split(".")[0]
    if top == CORE:
        return "core"
    return "stage" if top in STAGES else "orchestrator"


def layer_violations(graph: ImportGraph) -> list[str]:
    """Each import that goes against the layers, as ``a -> b: why``."""
    out = []
    for module, targets in graph.edges.items():
        top = module.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if layer(target) == "cli" and layer(module) != "cli":
                out.append(f"{module} -> {target}: a library module imports a CLI module")
            elif top in STAGES and other in STAGES and other != top:
                out.append(f"{module} -> {target}: a stage imports another stage")
            elif top in STAGES and other in ORCHESTRATORS:
                out.append(f"{module} -> {target}: a stage imports the orchestrator")
            elif layer(module) == "core" and other != CORE:
                out.append(f"{module} -> {target}: the core imports a stage or the loop")
    return out


def import_cycles(graph: ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for start in graph.modules:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.edges.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return cycles


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return build_graph(ROOT)


def test_every_import_respects_the_layers(graph):
    assert layer_violations(graph) == []


def test_there_are_no_import_cycles(graph):
    assert import_cycles(graph) == []


def test_no_private_name_is_imported_from_another_module(graph):
    assert [f"{m} imports {name} from {t}" for m, t, name in graph.private] == []


def test_the_graph_sees_lazy_imports_and_stage_code(graph):
    # guards the three tests above against a walker that finds nothing
    assert len(graph.modules) > 50
    assert "thresher.embeddings" in graph.edges["review.push"]  # imported inside a function
    assert "thresher.project" in graph.edges["curate.score"]


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_the_checks_catch_each_kind_of_violation(tmp_path):
    _write(
        tmp_path,
        {
            "thresher/__init__.py": "",
            "thresher/core.py": "def f():\n    from curate.a import x\n",
            "curate/__init__.py": "",
            "curate/a.py": "from tune.b import _hidden\nx = 1\n",
            "curate/cli.py": "",
            "curate/lib.py": "from . import cli\n",
            "tune/__init__.py": "",
            "tune/b.py": "from .c import y\n_hidden = 1\n",
            "tune/c.py": "from tune import b\ny = 2\n",
            "review/__init__.py": "",
            "loop/__init__.py": "",
        },
    )
    graph = build_graph(tmp_path)
    why = "\n".join(layer_violations(graph))
    assert "thresher.core -> curate.a: the core imports" in why
    assert "curate.a -> tune.b: a stage imports another stage" in why
    assert "curate.lib -> curate.cli: a library module imports a CLI module" in why
    assert import_cycles(graph) == [["tune.b", "tune.c"]]
    assert graph.private == [("curate.a", "tune.b", "_hidden")]
