"""The model package stays pure PyTorch: parallelism lives in train/, never in model/."""

from __future__ import annotations

import ast
from pathlib import Path

import model

MODEL_DIR = Path(model.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_model_never_imports_torch_distributed():
    files = sorted(MODEL_DIR.glob("*.py"))
    assert len(files) >= 8
    offenders = {
        str(path.name): sorted(n for n in imported_modules(path) if n.startswith("torch.distributed"))
        for path in files
    }
    assert {name: found for name, found in offenders.items() if found} == {}
