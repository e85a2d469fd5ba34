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


def readme_hf_example() -> str:
    """The README's Python snippet that loads the Hugging Face export."""
    text = (REPO / "README.md").read_text()
    (snippet,) = [
        s for s in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "AutoModelForCausalLM" in s
    ]
    return snippet


@pytest.mark.slow
def test_readme_hf_example_prints_what_infer_sample_prints(trained_run: Path, tmp_path: Path, capsys):
    """Both start the prompt as a document (after <|endoftext|>) and decode greedily: the same text."""
    import json
    import os
    import subprocess
    import sys

    from data.tokenizer import load_bpe
    from infer.export_hf import main as export_hf_main
    from infer.sample import main as sample_main

    snippet = readme_hf_example()
    (prompt,) = re.findall(r'"(def [^"]*)"', snippet)
    (new_tokens,) = re.findall(r"max_new_tokens=(\d+)", snippet)
    export_hf_main([str(trained_run), str(tmp_path / "hf")])
    capsys.readouterr()
    sample_main([str(trained_run), "--prompt", prompt, "--temperature", "0", "--max-new-tokens", new_tokens])
    expected = capsys.readouterr().out
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    script = snippet.replace(f'"{README_RUN.replace("runs/", "hf/")}"', repr(str(tmp_path / "hf")))
    script += "\nimport json\nprint('IDS', json.dumps(ids[0].tolist()))\n"  # what the model was given
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,  # AutoTokenizer asks whether to trust the config's code; no answer is "no"
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    printed, ids = proc.stdout.rsplit("IDS ", 1)
    enc = load_bpe(trained_run / "tokenizer")
    assert json.loads(ids) == [
        enc.eot_token,
        *enc.encode_ordinary(prompt),
    ]  # a document start, as infer.sample
    assert printed.endswith(expected), (printed[-500:], expected)  # the trust question prints first
