"""Dependency direction: modules/ (pure numpy/TF, the code TFX runs by import path) never imports
components/ or pipeline/; components/ may import modules/ but not pipeline/; pipeline/ composes
both. Checked on every import statement, including function-local ones."""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORBIDDEN = {
    "modules": ("components", "pipeline", "tests"),
    "components": ("pipeline", "tests"),
    "pipeline": ("tests",),
}


def _imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def _python_files(package):
    for root, _, files in os.walk(os.path.join(REPO, package)):
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(root, name)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package):
    files = list(_python_files(package))
    assert len(files) > 3, f"no sources found under {package}/"
    bad = [
        f"{os.path.relpath(path, REPO)}:{line} imports {name}"
        for path in files
        for line, name in _imports(path)
        if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert not bad, "\n".join(bad)


def test_the_walk_sees_function_local_imports(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from pipeline import config\n")
    assert list(_imports(str(source))) == [(2, "pipeline")]
