"""The floors of the house: engine <- report <- sweep <- cli / api, imports pointing one way, no circles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdtune"
FLOORS = {"engine": 0, "report": 1, "sweep": 2, "cli": 3, "api": 3}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def floor(module: str) -> int | None:
    parts = module.split(".")
    return FLOORS.get(parts[1]) if len(parts) > 1 else None


def kdtune_imports(path: Path, module: str) -> set[str]:
    """Every kdtune module `path` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing package
                package = module.split(".")[: -node.level] if not path.name == "__init__.py" else module.split(".")
                base = ".".join([*package, base] if base else package)
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}
    known = modules()
    return {n for n in names if n in known and n.startswith("kdtune")}


@pytest.mark.parametrize("module", sorted(modules()))
def test_no_module_imports_from_a_higher_floor(module):
    own = floor(module)
    if own is None:
        return
    higher = {name for name in kdtune_imports(modules()[module], module)
              if floor(name) is not None and floor(name) > own}
    assert not higher, f"{module} (floor {own}) imports {sorted(higher)} from a higher floor"


def test_no_import_circles():
    graph = {m: kdtune_imports(p, m) - {m} for m, p in modules().items()}
    # A package's __init__ importing its own modules is not a circle of meaning; the modules themselves are.
    graph = {m: {n for n in deps if not (m.startswith(n + ".") and modules()[n].name == "__init__.py")}
             for m, deps in graph.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked}:
            raise ImportError('blocked by the test: ' + name)
sys.meta_path.insert(0, Block())
"""


def test_every_engine_module_imports_without_ray_optuna_pandas_or_matplotlib():
    engine = [m for m in modules() if m == "kdtune.engine" or m.startswith("kdtune.engine.")]
    assert len(engine) > 10
    code = BLOCKER.format(blocked={"ray", "optuna", "pandas", "matplotlib"}) + "".join(
        f"import {m}\n" for m in engine)
    done = subprocess.run([sys.executable, "-c", code + "print('ok')"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_report_modules_import_without_ray_or_optuna():
    report = [m for m in modules() if m.startswith("kdtune.report")]
    code = BLOCKER.format(blocked={"ray", "optuna"}) + "".join(f"import {m}\n" for m in report)
    done = subprocess.run([sys.executable, "-c", code + "print('ok')"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_tune_help_imports_neither_ray_nor_optuna():
    code = BLOCKER.format(blocked={"ray", "optuna"}) + (
        "from kdtune.cli import main\n"
        "try:\n    main(['tune', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--grid" in done.stdout
