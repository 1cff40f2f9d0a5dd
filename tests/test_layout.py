"""The package's shape: one job per module, data flowing one way (README, "How the code is
laid out")."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "alexnet_jax"
MAX_LINES = 250


def imported_modules(path: Path) -> set[str]:
    """The package modules `path` imports (relative imports, at any depth)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def test_only_the_entry_points_import_the_training_loop():
    importers = sorted(p.name for p in PACKAGE.glob("*.py") if "train" in imported_modules(p))
    assert importers == ["cli.py", "d2l_compare.py"]


def test_model_is_free_of_kernels_and_steps_of_pipelines():
    assert imported_modules(PACKAGE / "model.py") == set()
    assert "input_pipeline" not in imported_modules(PACKAGE / "steps.py")


def test_no_module_over_the_line_budget():
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
