"""The import graph of the library: no cycle, and no import from a lower layer to a higher one.

Function-local imports count too (a cycle hidden in a function is still a cycle). The layers, lowest
first, are the architecture the folders show; DAGs, plugins, the CLI, scripts and benchmarks sit on top
and nothing in the library imports them.
"""

import ast
from pathlib import Path

import pytest

from conftest import REPO

LIBRARY = REPO / "include" / "synpref"
LAYERS = [  # lowest first; a module may import its own layer and the ones below
    (
        "foundation",
        [
            "synpref.settings",
            "synpref.environment",
            "synpref.seeding",
            "synpref.progress",
            "synpref.schema",
            "synpref.io.storage",
        ],
    ),
    ("records", ["synpref.records", "synpref.io.layout"]),
    ("io", ["synpref.io"]),
    ("models", ["synpref.models"]),
    ("llm", ["synpref.llm"]),
    ("stage1", ["synpref.stage1"]),
    ("stage2", ["synpref.stage2"]),
    ("simulation", ["synpref.simulation"]),
    ("reporting", ["synpref.reporting"]),
    ("runners", ["synpref.pipeline", "synpref.cli"]),
]
PRODUCTION_STEPS = ("synpref.io", "synpref.models", "synpref.llm", "synpref.stage1", "synpref.stage2")


def _module(path: Path) -> str:
    parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every synpref module ``path`` imports, anywhere in the file (relative imports resolved)."""
    here = _module(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == "synpref":
                out.add(base)
                out.update(
                    f"{base}.{a.name}"
                    for a in node.names
                    if (LIBRARY.parent / f"{base}.{a.name}".replace(".", "/")).with_suffix(".py").exists()
                )
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "synpref")
    return {m for m in out if _exists(m)} - {_module(path)}


def _exists(module: str) -> bool:
    p = LIBRARY.parent / module.replace(".", "/")
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


GRAPH = {_module(p): _imports(p) for p in sorted(LIBRARY.rglob("*.py"))}


def _layer(module: str) -> int:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return best[0]


def test_every_library_module_has_a_layer():
    unlayered = []
    for module in GRAPH:
        try:
            _layer(module)
        except AssertionError:
            unlayered.append(module)
    assert unlayered == ["synpref"], f"modules in no layer (add them to LAYERS): {unlayered}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m != "synpref"))
def test_no_import_reaches_up_a_layer(module):
    up = sorted(m for m in GRAPH[module] if m != "synpref" and _layer(m) > _layer(module))
    assert not up, f"{module} ({LAYERS[_layer(module)][0]}) imports higher layers: {up}"


def test_production_steps_never_import_the_simulations():
    leaks = {m: sorted(d for d in deps if d.startswith("synpref.simulation")) for m, deps in GRAPH.items()}
    assert not {m: d for m, d in leaks.items() if d and m.startswith(PRODUCTION_STEPS)}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module → modules it imports), or None."""
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep, path + [dep])):
                return cycle
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_library_never_imports_airflow_or_the_top_level():
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert name.split(".")[0] not in ("airflow", "synpref_common", "dags", "benchmarks"), (path, name)


def test_the_checks_see_a_cycle_and_an_upward_import():
    """The checks can fail: a cycle hidden in a function-local import, and a step importing the report."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert _layer("synpref.stage1.steps") < _layer("synpref.reporting.report")  # so stage1 → report is upward
    assert _layer("synpref.io.storage") < _layer("synpref.io.readers")  # the foundation is below the rest of io


def test_no_library_function_is_over_80_lines():
    """Small functions: a step that grows past 80 lines is split into named parts (docs/development.md)."""
    import ast

    long = []
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{_module(path)}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == []
