"""The shape the code keeps (issue 18): no import cycle, no module over 800 lines, and the readers of
the run directory (reports, dashboards, reader study) never import torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("audit", "reports", "dashboards", "reader_study")
MAX_LINES = 800


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path], lazy: bool) -> set[str]:
    """Project modules that ``name`` imports: at module level (``TYPE_CHECKING`` blocks included: a cycle
    of types is still a cycle to a reader), or anywhere with ``lazy``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(nodes: list[ast.stmt]) -> set[str]:
        out: set[str] = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join([*parts[: len(parts) - node.level + 1], base]).strip(".")
                # `from pkg import module` depends on the module; running pkg/__init__ on the way is
                # how every submodule import works and is not counted as an edge.
                for alias in node.names:
                    out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not lazy:
                continue
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    out |= visit([c for c in children if isinstance(c, (ast.stmt, ast.ExceptHandler))])  # type: ignore[misc]
        return out

    found = visit(tree.body)
    return {m for m in found if m in modules and m != name}


def _cycles(lazy: bool) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    modules = _modules()
    graph = {name: sorted(_imports(name, path, modules, lazy)) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            strongconnect(v)
    return out


def test_no_import_cycle_at_module_level():
    assert _cycles(lazy=False) == []


def test_no_import_cycle_even_through_imports_inside_functions():
    assert _cycles(lazy=True) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    for package, body in (("audit", "from reports import x\n"), ("reports", "import audit.y\n")):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "audit" / "y.py").write_text("from reports import x\n")
    (tmp_path / "reports" / "x.py").write_text("def f():\n    import audit.y\n")
    for package in ("dashboards", "reader_study"):
        (tmp_path / package).mkdir()
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert _cycles(lazy=False) == []
    assert _cycles(lazy=True) == [["audit.y", "reports.x"]]


def test_no_module_over_800_lines():
    long = {
        str(path.relative_to(REPO)): n
        for path in _modules().values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


@pytest.mark.parametrize("package", ["reports", "dashboards", "reader_study"])
def test_readers_of_the_run_directory_never_import_torch(package):
    names = sorted(n for n in _modules() if n == package or n.startswith(f"{package}."))
    # The streamlit pages are scripts run by `streamlit run`; importing them renders a page.
    names = [
        n
        for n in names
        if not n.startswith("dashboards.views") and n not in ("dashboards.app", "reader_study.app")
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'torchxrayvision'))\n"
        "assert not bad, bad[:5]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
