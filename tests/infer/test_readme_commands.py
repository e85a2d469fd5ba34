"""The README's `python -m infer.*` commands run as written on a finished run dir (the offline ones)."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README_RUN = "runs/tiny-diff_v2"


def readme_infer_commands() -> list[str]:
    """Each `.venv/bin/python -m infer.X ...` line of the README (continuation lines joined)."""
    text = (REPO / "README.md").read_text().replace("\\\n", " ")
    return re.findall(r"^\.venv/bin/python -m (infer\.\w+ .*)$", text, flags=re.M)


def test_readme_shows_the_sample_perplexity_export_and_evaluate_commands():
    modules = {command.split()[0] for command in readme_infer_commands()}
    assert modules == {"infer.sample", "infer.perplexity", "infer.export_hf", "infer.evaluate"}


@pytest.mark.parametrize("command", [c for c in readme_infer_commands() if "hellaswag" not in c])
def test_readme_command_runs_on_a_finished_run(command: str, trained_run: Path, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the README's paths (tests/infer/tasks, model/*.py) are relative to the repo
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    module, *argv = shlex.split(command.replace(README_RUN, str(trained_run)))
    argv = [str(tmp_path / a) if a.startswith("hf/") else a for a in argv]  # write the export under tmp
    importlib.import_module(module).main(argv)
