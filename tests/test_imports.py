"""ddsm_core's import graph: no cycles, and the modules the dashboard imports never load TensorFlow."""
import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

from support import PROJECT, cli_env

PACKAGE = PROJECT / "ddsm_core"
# what the dashboard imports: they must stay quick to import (no TensorFlow, no Keras)
LIGHT_MODULES = ["ddsm_core.runs", "ddsm_core.jobs", "ddsm_core.review", "ddsm_core.config"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_names(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """Every dotted name an import statement may load: the module, and each imported name under it
    (so `from . import runs` yields ddsm_core.runs)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = package.rsplit(".", node.level - 1)[0]
        base = f"{anchor}.{base}" if base else anchor
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at module level or inside a function."""
    modules = package_modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imports = [node for node in ast.walk(ast.parse(path.read_text(), str(path)))
                   if isinstance(node, (ast.Import, ast.ImportFrom))]
        # a module's own enclosing packages are initialised before it whatever it imports: not an edge
        graph[name] = {target for node in imports for target in imported_names(node, package)
                       if target in modules and target != name and not name.startswith(target + ".")}
    return graph


def test_the_graph_sees_relative_absolute_and_function_level_imports():
    graph = import_graph()
    assert "ddsm_core.runs" in graph["ddsm_core.jobs"]  # from . import runs
    assert "ddsm_core.data.store" in graph["ddsm_core.review"]  # from .data import store
    assert "ddsm_core.tasks" in graph["ddsm_core.data.store"]  # from ..tasks import SOURCE_LABELS
    assert "ddsm_core.training" in graph["ddsm_core.cli"]  # inside a command's function


def test_no_import_cycles():
    try:
        tuple(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as error:
        # the sorter lists each module before the one that imports it
        pytest.fail("import cycle in ddsm_core: " + " imports ".join(reversed(error.args[1])))


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_dashboard_modules_do_not_load_tensorflow(module):
    code = (f"import sys, {module}; "
            "print(' '.join(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(),
                            cwd=PROJECT, timeout=120, check=True)
    assert result.stdout.strip() == "", f"importing {module} loads {result.stdout.strip()}"
