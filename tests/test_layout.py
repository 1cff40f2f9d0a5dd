"""The package's shape: folders by concern, dependencies one way, no import circle, one job
per module (README, "How the code is laid out")."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "alexnet_jax"
# config.py (the settings and their defaults) imports nothing of the package, and anything
# may import it; runtime/ and kernels/ import nothing else of the package, model/ kernels/
# (model/alexnet.py config only: its layers are injected).
# Each folder (or top-level module) and what it may import besides itself and config; the
# package's face (alexnet_jax/__init__.py) may import anything but the CLI, the CLI anything.
MAY_IMPORT = {
    "config": set(), "runtime": set(), "kernels": set(), "model": {"kernels"},
    "observe": {"runtime"},
    "data": {"runtime", "observe"},
    "training": {"model", "kernels", "data", "runtime", "observe"},
    "d2l": {"training", "model", "kernels", "data", "runtime", "observe"},
    "commands": {"d2l", "training", "model", "kernels", "data", "runtime", "observe"},
}
TOP_LEVEL = {"__init__.py", "__main__.py", "cli.py", "cli_parser.py", "config.py"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module of the package -> the package modules it imports (at any depth in the
    file, relative or absolute); `from . import x` counts x when x is a module."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                names = [f"{base}.{a.name}" for a in node.names]
                targets = names if any(t in modules for t in names) else [base]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found.update(t for t in targets if t in modules and t != name)
        graph[name] = found
    return graph


def layer(module: str) -> str:
    """'data' for alexnet_jax.data.x, 'model' for alexnet_jax.model, 'cli' for the entry
    points, 'face' for the package's __init__."""
    parts = module.split(".")
    if len(parts) == 1:
        return "face"
    return "cli" if parts[1] in ("cli", "cli_parser", "__main__") else parts[1]


def against_the_direction(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    bad = []
    for importer, imported in graph.items():
        for target in imported:
            a, b = layer(importer), layer(target)
            allowed = (a == b or a == "cli" or (a == "face" and b != "cli")
                       or (b == "config" and a != "config") or b in MAY_IMPORT.get(a, set()))
            if not allowed:
                bad.append((importer, target))
    return sorted(bad)


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk, each as the modules along it."""
    circles, state = [], {}

    def walk(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    return circles


def test_folders_import_one_way_and_nothing_imports_the_cli():
    graph = import_graph()
    assert against_the_direction(graph) == []
    assert "alexnet_jax.data.fashion_mnist" in graph["alexnet_jax.training.loop"]  # it reads


def test_no_import_circle():
    assert import_circles(import_graph()) == []


def test_the_checks_catch_a_module_against_the_direction_and_a_circle(tmp_path):
    """A synthetic package: data/ imports the training loop, which imports it back."""
    root = tmp_path / "alexnet_jax"
    for folder in ("data", "training"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "data" / "bad.py").write_text("def f():\n    from ..training import loop\n")
    (root / "training" / "loop.py").write_text("from ..data.bad import f\n")
    graph = import_graph(root)
    assert against_the_direction(graph) == [("alexnet_jax.data.bad", "alexnet_jax.training.loop")]
    assert import_circles(graph) == [["alexnet_jax.data.bad", "alexnet_jax.training.loop",
                                      "alexnet_jax.data.bad"]]


def test_only_the_entry_points_import_the_training_loop():
    graph = import_graph()
    loop = "alexnet_jax.training.loop"
    importers = sorted(m for m, imported in graph.items() if loop in imported)
    assert importers == ["alexnet_jax.cli", "alexnet_jax.d2l.compare"]


def test_model_is_free_of_kernels_and_steps_of_pipelines():
    graph = import_graph()
    assert graph["alexnet_jax.model.alexnet"] == {"alexnet_jax.config"}
    assert "alexnet_jax.data.input_pipeline" not in graph["alexnet_jax.training.steps"]


def test_top_level_holds_the_entry_points_and_folders_say_what_they_hold():
    assert {p.name for p in PACKAGE.glob("*.py")} == TOP_LEVEL
    folders = {p.parent.name: p for p in PACKAGE.glob("*/__init__.py")}
    assert set(folders) == set(MAY_IMPORT) - {"config"}
    for name, init in folders.items():
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "Imports" in doc, name  # what it holds, and what it may import


def test_the_work_dirs_record_names_are_written_once():
    """Every record's name is a string in training/layout.py and nowhere else in the package
    (`plot --out`'s default, curves.png in the current directory, is no work dir's record)."""
    from alexnet_jax.training import layout

    names = {*layout.RECORDS, layout.LOCK, layout.REPLACED}
    found = []
    plot_default = ("cli_parser.py", "curves.png")
    for path in PACKAGE.rglob("*.py"):
        if path.name == "layout.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names \
                    and (path.name, node.value) != plot_default:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert found == []


def test_restart_sets_aside_every_record_of_a_run(tmp_path):
    """`train --restart` moves each record (profiles too) into replaced/TIME/; the lock stays."""
    from alexnet_jax.training import layout
    from alexnet_jax.training.layout import set_aside

    defined = {v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str)}
    assert defined - {layout.LOCK, layout.REPLACED} == set(layout.RECORDS)  # none forgotten
    for name in layout.RECORDS:
        if "." in name:
            (tmp_path / name).write_text("x")
        else:
            (tmp_path / name).mkdir()
            (tmp_path / name / "inside").write_text("x")
    (tmp_path / layout.LOCK).write_text("")
    aside = set_aside(tmp_path)
    assert sorted(p.name for p in aside.iterdir()) == sorted(layout.RECORDS)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([layout.LOCK, layout.REPLACED])
