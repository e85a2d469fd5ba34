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


def test_a_prompt_longer_than_the_models_context_is_a_config_error(trained_run: Path, capsys):
    code, err = _run(
        sample_main, [str(trained_run), "--prompt", "x = 1\n" * 64, "--max-new-tokens", "1"], capsys
    )
    assert code == EXIT_CONFIG
    assert err.startswith("config error: prompt 'x = 1") and "exceeds the model's max_seq_len=64" in err, err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("command", "argv", "expected"),
    [
        (
            sample_main,
            ["--prompts-file", "{tmp}/absent.txt"],
            "config error: --prompts-file {tmp}/absent.txt: ",
        ),
        (perplexity_main, ["{tmp}"], "config error: FILE {tmp}: Is a directory"),
        (perplexity_main, ["{tmp}/latin1.txt"], "config error: FILE {tmp}/latin1.txt is not UTF-8 text"),
        (
            sample_main,
            ["--prompt", "x", "--device", "tpu:9"],
            "config error: --device 'tpu:9' cannot be used",
        ),
    ],
    ids=["missing-prompts-file", "directory-as-text", "not-utf8", "bad-device"],
)
def test_a_bad_input_file_or_device_is_a_config_error(command, argv, expected, trained_run, tmp_path, capsys):
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, err = _run(command, [str(trained_run), *argv], capsys)
    assert code == EXIT_CONFIG
    assert err.startswith(expected.replace("{tmp}", str(tmp_path))) and err.count("\n") == 1, err
