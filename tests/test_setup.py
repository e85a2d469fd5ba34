"""The README's two commands set up in proportion: `make train` installs what training needs, `make test` adds
the test extras; each set is installed once (a stamp per set), again when pyproject.toml changes.

`make -n` prints what make would run without running it, against a venv path of the test's own."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def planned(target: str, venv: Path) -> str:
    out = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, f"VENV={venv}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout


def pip_installs(plan: str) -> list[str]:
    return [line.split("pip install -q ", 1)[1] for line in plan.splitlines() if "pip install -q " in line]


def test_make_train_from_a_clean_clone_installs_torch_and_the_project_only(tmp_path: Path):
    plan = planned("train", tmp_path / "venv")
    assert pip_installs(plan) == ["--upgrade pip", '"torch==2.13.0"', "-e ."]
    assert "-m train" in plan


def test_make_test_from_a_clean_clone_adds_the_test_extras(tmp_path: Path):
    plan = planned("test", tmp_path / "venv")
    assert pip_installs(plan) == ["--upgrade pip", '"torch==2.13.0"', "-e .", '-e ".[dev]"']
    assert "-m pytest" in plan


def test_after_make_train_make_test_installs_only_the_extras_and_then_nothing(tmp_path: Path):
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed-train").touch()
    assert pip_installs(planned("train", venv)) == []
    assert pip_installs(planned("test", venv)) == ['-e ".[dev]"']
    (venv / ".installed-test").touch()
    assert pip_installs(planned("test", venv)) == []
    # a changed pyproject.toml (newer than the stamps) reinstalls both sets
    for stamp in venv.iterdir():
        os.utime(stamp, (0, 0))
    assert len(pip_installs(planned("test", venv))) == 4
