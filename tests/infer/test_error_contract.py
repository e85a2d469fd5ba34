"""`infer.*`'s side of the one error contract: a refused checkpoint is one line and exit 4 as in
`python -m train` and `train.export` (no traceback), and bad arguments are refused by name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from infer.perplexity import main as perplexity_main
from infer.sample import main as sample_main

EXIT_CONFIG, EXIT_CHECKPOINT = 2, 4


def _run(command, argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        command(argv)
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize("command", [sample_main, perplexity_main], ids=["infer.sample", "infer.perplexity"])
def test_a_corrupted_checkpoint_is_one_line_and_exit_4(command, trained_run: Path, tmp_path, capsys):
    ckpt = shutil.copytree(trained_run / "checkpoints" / "step_00000004", tmp_path / "ckpt")
    shard = ckpt / "__0_0.distcp"
    data = shard.read_bytes()
    shard.write_bytes(data[:-16] + bytes(b ^ 0xFF for b in data[-16:]))
    text = tmp_path / "a.txt"
    text.write_text("def f(x):\n    return x\n")
    argv = [str(ckpt), "--prompt", "def"] if command is sample_main else [str(ckpt), str(text)]
    code, err = _run(command, argv, capsys)
    assert code == EXIT_CHECKPOINT
    assert err.startswith(f"checkpoint refused: {shard} has sha256") and err.count("\n") == 1, err


def test_a_negative_max_new_tokens_is_refused_by_the_argument_check(trained_run: Path, capsys):
    code, err = _run(sample_main, [str(trained_run), "--prompt", "x", "--max-new-tokens", "-3"], capsys)
    assert code == EXIT_CONFIG
    assert "--max-new-tokens: -3 is not a positive number of tokens" in err


def test_a_whitespace_only_prompt_line_is_refused_naming_it(trained_run: Path, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("def\n\n   \nimport\n")  # the empty line 2 is skipped; line 3 is only spaces
    code, err = _run(sample_main, [str(trained_run), "--prompts-file", str(prompts)], capsys)
    assert code == EXIT_CONFIG
    assert err == f"config error: --prompts-file {prompts} line 3 holds only whitespace: remove it, or " + (
        "write the prompt (`\\n` stands for a newline)\n"
    )
