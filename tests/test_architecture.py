"""The import graph keeps the rooms apart: a probe module imports only the probe base and the layers
under it (never another probe module or the engine), and grokscope/, probes/ and datasets/ have no
import circle. Built from the source with ``ast`` (imports inside functions count)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"grokscope": ROOT / "grokscope", "probes": ROOT / "probes", "datasets": ROOT / "datasets"}
ALIASES = {"grokscope.probes": "probes", "grokscope.datasets": "datasets"}  # grokscope's import aliases

# what a probe module may import from the project: the probe base, the functional layer, model
# adapters and layers, losses, errors and presentation specs, the modular-task encoding (fourier)
# and the regions geometry (regions)
PROBE_MAY_IMPORT = ("probes.base", "grokscope.functional", "grokscope.models.adapters", "grokscope.models.layers",
                    "grokscope.losses", "grokscope.errors", "grokscope.presentation",
                    "datasets.modular", "grokscope.regions")

# ``import datasets`` in datasets/files.py is the Hugging Face package (the flat layout shares its name)
THIRD_PARTY = {("datasets.files", "datasets")}


def _module_name(path: Path) -> str:
    for pkg, folder in PACKAGES.items():
        if folder in path.parents:
            parts = [pkg, *path.relative_to(folder).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(path)


def _canonical(name: str) -> str:
    for alias, real in ALIASES.items():
        if name == alias or name.startswith(alias + "."):
            return real + name[len(alias):]
    return name


def import_graph() -> dict[str, set[str]]:
    """``{module: {project modules it imports}}`` over grokscope/, probes/ and datasets/."""
    files = {_module_name(f): f for folder in PACKAGES.values() for f in folder.rglob("*.py")}

    def resolve(name: str) -> str | None:
        name = _canonical(name)
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, f in files.items():
        package = mod if f.name == "__init__.py" else mod.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names if (mod, a.name) not in THIRD_PARTY]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                # ``from pkg import module`` imports that module (the package's __init__ runs anyway,
                # as it does for every module below it); ``from pkg import name`` imports pkg
                names = [f"{base}.{a.name}" if _canonical(f"{base}.{a.name}") in files else base
                         for a in node.names]
            else:
                continue
            edges.update(t for t in map(resolve, names) if t and t != mod)
        graph[mod] = edges
    return graph


def circles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.add(frozenset(comp))
    return found


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {frozenset("abc")}
    assert circles({"a": {"b"}, "b": set()}) == set()


def test_probe_modules_import_only_the_layers_below_them():
    graph = import_graph()
    probe_modules = [m for m in graph if m.startswith("probes.") and m != "probes.base"]
    assert {"probes.acc", "probes.lc", "probes.pgd"} <= set(probe_modules)
    bad = [f"{m} imports {t}" for m in probe_modules for t in sorted(graph[m])
           if not any(t == ok or t.startswith(ok + ".") for ok in PROBE_MAY_IMPORT)]
    assert not bad, "\n".join(bad)


def test_no_probe_module_imports_another_probe_or_the_engine():
    graph = import_graph()
    bad = [f"{m} imports {t}" for m, targets in graph.items() if m.startswith("probes.") and m != "probes.base"
           for t in targets if t.startswith("grokscope.engine") or (t.startswith("probes") and t != "probes.base")]
    assert not bad, "\n".join(bad)


def test_no_import_circle():
    assert circles(import_graph()) == set()
