"""The package's layering, checked on the source (``ast``), so a stray import fails here first."""

from __future__ import annotations

import ast
from pathlib import Path

AUDIT = Path(__file__).resolve().parent.parent / "audit"

# The packages built on top of ``audit``; only its command line may compose them with a run.
_UPPER_PACKAGES = ("reports", "reader_study", "dashboards")


def _imported_packages(path: Path) -> set[str]:
    """Top-level package of every absolute import in the module, wherever it appears (module level,
    functions, ``TYPE_CHECKING`` blocks); relative imports stay inside ``audit`` and are left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_only_the_cli_imports_reports_reader_study_and_dashboards():
    cli = AUDIT / "cli"
    offenders = {
        str(path.relative_to(AUDIT.parent)): sorted(_imported_packages(path) & set(_UPPER_PACKAGES))
        for path in sorted(AUDIT.rglob("*.py"))
        if cli not in path.parents
    }
    assert {name: pkgs for name, pkgs in offenders.items() if pkgs} == {}


def test_the_import_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "import os\n"
        "def f():\n"
        "    from reports.html import write_html_report\n"
        "    import dashboards.serve\n"
        "from . import reader_study\n"
    )
    assert _imported_packages(module) == {"os", "reports", "dashboards"}
