"""The layers hold (docs: ARCHITECTURE.md, "Layers"): every import of the project's packages, read from the
source (module-level and inside functions alike), points only where its layer may look.

    commands (python -m train / launch / data.prepare / model.summary / analysis.* / infer.* / bench)
    conf/            the composed schema: only each package's config module, and errors
    train/ -> model/, data/      launch/ -> conf/, train/ (never model/)
    model/, data/    nothing of the project above them
    errors/          nothing of the project

analysis/ (run analysis) and infer/ (using a trained model) are imported by nobody but themselves; analysis/
never imports model/ (it never builds one).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("analysis", "bench", "conf", "data", "errors", "infer", "launch", "model", "train")

FORBIDDEN: dict[str, set[str]] = {
    "model": {"analysis", "bench", "conf", "data", "infer", "launch", "train"},
    "data": {"analysis", "bench", "conf", "infer", "launch", "model", "train"},
    "train": {"analysis", "bench", "infer", "launch"},
    "launch": {"analysis", "bench", "infer", "model"},
    "conf": {"analysis", "bench", "infer"},
    "errors": set(PACKAGES) - {"errors"},
    "infer": {"analysis", "bench", "launch"},
    "analysis": {"bench", "infer", "model"},  # reads what runs recorded; a measurement that builds a model
    # (model.init_scale) records its own output for analysis to read
    "bench": {"analysis", "infer"},
}
"""Package -> the packages it must not import (its own command functions aside: COMMANDS)."""

CONF_MAY_IMPORT = {"errors", "model.config", "data.config", "train.config", "launch.config"}
"""conf assembles the sections: each package's config module (its dataclasses and checks), nothing more."""

COMMANDS = {
    ("data/prepare.py", "main"): "`python -m data.prepare`: composes cfg.data from conf/",
    ("model/summary.py", "main"): "`python -m model.summary`: composes each attention preset's model config",
}
"""Command entry points whose documented `python -m` name keeps them inside a package: only the named
function may reach above the package (to compose the whole config), never the module's library code."""


def _imports(tree: ast.AST, package: str = "") -> list[tuple[str, int, str | None]]:
    """(imported module, line, enclosing top-level function or None) for every import; a relative one is
    resolved against `package`, the dotted package of the file (model/ imports itself relatively)."""
    found: list[tuple[str, int, str | None]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            scope = function
            if function is None and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                scope = child.name
            if isinstance(child, ast.Import):
                found.extend([(alias.name, child.lineno, scope) for alias in child.names])
            elif isinstance(child, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - child.level + 1] if child.level else []
                module = ".".join([*base, *([child.module] if child.module else [])])
                # `from train import config` imports train.config: name the submodule when it is one.
                found.extend([(f"{module}.{alias.name}", child.lineno, scope) for alias in child.names])
            visit(child, scope)

    visit(tree, None)
    return found


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _target(dotted: str) -> str:
    """The project module an import names: `from train import config` -> train.config, `from conf.schema
    import RunConfig` -> conf.schema."""
    return dotted if _is_module(dotted) else dotted.rsplit(".", 1)[0]


def violations() -> list[str]:
    bad: list[str] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            dotted_package = ".".join(path.relative_to(ROOT).parent.parts)
            for dotted, line, function in _imports(ast.parse(path.read_text(), rel), dotted_package):
                top = dotted.split(".")[0]
                if top not in PACKAGES or top == package or (rel, function) in COMMANDS:
                    continue
                target = _target(dotted)
                if top in FORBIDDEN[package]:
                    bad.append(f"{rel}:{line} imports {target} ({package} must not import {top})")
                elif package == "conf" and target not in CONF_MAY_IMPORT:
                    bad.append(f"{rel}:{line} imports {target} (conf imports only {sorted(CONF_MAY_IMPORT)})")
    return bad


def test_every_import_points_down_its_layers():
    bad = violations()
    assert not bad, "imports against the layers (ARCHITECTURE.md, Layers):\n" + "\n".join(bad)


@pytest.mark.parametrize(("path", "function"), sorted(COMMANDS))
def test_each_named_command_exists(path: str, function: str):
    # A command that moved or was renamed must leave this list, or it would excuse whatever takes its name.
    tree = ast.parse((ROOT / path).read_text())
    assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, (path, function)


def test_the_scan_sees_imports_inside_functions_and_relative_ones():
    source = (
        "import os\nfrom .config import X\n\n"
        "def main():\n    from conf import compose\n    from ..train import run\n"
    )
    assert [(m, f) for m, _, f in _imports(ast.parse(source), "model")] == [
        ("os", None),
        ("model.config.X", None),
        ("conf.compose", "main"),
        ("train.run", "main"),
    ]
