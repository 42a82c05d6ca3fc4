"""The package as a whole: no import cycle among hapnet's modules, one computation path (no C
sources, no ctypes, nothing that changes the process), tests that mirror the package, and a CLI
that starts without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest
from testdata import TESTS

import hapnet

ROOT = TESTS.parent
# Where each installed package's sources are (pyproject.toml's package-dir).
SOURCES = {"hapnet": ROOT / "hapnet", "hapnet.cli": ROOT / "cli", "hapnet.ontologies": ROOT / "ontologies"}


def module_files() -> dict[str, Path]:
    """Every hapnet module (packages as their __init__) -> its file."""
    modules = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            if package == "hapnet" and len(parts) and parts[0] in ("cli", "ontologies"):
                continue  # not there: the top-level folders install under these names
            modules[name] = path
    return modules


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The hapnet modules a file imports: at module level, in a function, or for type checking
    only (a cycle hidden behind TYPE_CHECKING is still two modules that need each other)."""
    found = set()
    pending = list(ast.parse(path.read_text(encoding="utf-8")).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
            for alias in node.names:  # `from hapnet.models import hap` imports a module
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        pending.extend(ast.iter_child_nodes(node))
    return found


def import_graph() -> nx.DiGraph:
    files = module_files()
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for name, path in files.items():
        graph.add_edges_from(
            (name, target) for target in imported_modules(path, set(files)) if target != name
        )
    return graph


def test_the_import_graph_is_read_from_every_module() -> None:
    graph = import_graph()
    assert {"hapnet", "hapnet.models.hap", "hapnet.training.trainer", "hapnet.cli.main"} <= set(graph)
    assert graph.has_edge("hapnet.models.hap", "hapnet.models.propagation")
    assert graph.has_edge("hapnet.cli.main", "hapnet.cli.train")  # `from hapnet.cli import train`
    assert graph.has_edge("hapnet.cli.inspect", "hapnet.inspect.plots")  # an import inside a function


def test_no_import_cycle_among_hapnet_modules() -> None:
    graph = import_graph()
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join([*c, c[0]]) for c in cycles[:5])


def test_a_cycle_would_be_found(tmp_path: Path) -> None:
    """The check above can fail: two modules importing each other are a cycle."""
    (tmp_path / "a.py").write_text("from hapnet.b import x\n")
    (tmp_path / "b.py").write_text("if TYPE_CHECKING:\n    import hapnet.a\n")
    graph = nx.DiGraph()
    for name in ("a", "b"):
        targets = imported_modules(tmp_path / f"{name}.py", {"hapnet.a", "hapnet.b"})
        graph.add_edges_from((f"hapnet.{name}", t) for t in targets)
    assert [sorted(cycle) for cycle in nx.simple_cycles(graph)] == [["hapnet.a", "hapnet.b"]]


@pytest.mark.parametrize("forbidden", ["ctypes", "mallopt", "load_library", "cpp_extension"])
def test_one_computation_path_no_native_code(forbidden: str) -> None:
    """Only torch operations compute: nothing compiled at run time, nothing loaded by hand."""
    for path in module_files().values():
        assert forbidden not in path.read_text(encoding="utf-8"), f"{path} mentions {forbidden}"
    for folder in SOURCES.values():
        native = [p for p in folder.rglob("*") if p.suffix in (".c", ".cc", ".cpp", ".h", ".so")]
        assert not native, native


def test_subpackages_import_and_tests_mirror_them() -> None:
    import hapnet.data
    import hapnet.models
    import hapnet.training

    assert hapnet.data.__doc__ and hapnet.models.__doc__ and hapnet.training.__doc__
    stages = sorted(p.name for p in SOURCES["hapnet"].iterdir() if (p / "__init__.py").exists())
    assert {"ontology", "data", "models", "training", "inspect", "embeddings", "perf"} <= set(stages)
    for stage in stages:
        assert list((TESTS / stage).glob("test_*.py")), f"no tests/{stage}/ for hapnet/{stage}/"


def test_public_api_names_resolve() -> None:
    for name in hapnet.__all__:
        assert getattr(hapnet, name) is not None, name
    assert callable(hapnet.train) and callable(hapnet.embed) and callable(hapnet.predict_next_visit)


def test_the_cli_starts_without_torch() -> None:
    """Every `hapnet` command pays torch's import (~2 s) only when it needs it."""
    code = "import sys, hapnet.cli.main; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_python_m_hapnet_is_the_cli() -> None:
    """The entry point `torchrun -m hapnet` and `python -m hapnet` use."""
    result = subprocess.run(
        [sys.executable, "-m", "hapnet", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "embed" in result.stdout
