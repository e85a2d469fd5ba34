"""`python -m infer.sample` on the artefacts of a finished run: run dir, checkpoint dir, export dir."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from data.tokenizer import load_bpe
from infer.sample import main as sample_main
from model.generate import sample_next
from train.export import load_exported


def _sample(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict]:
    sample_main([*argv, "--json"])
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_sampling_a_finished_run_dir_prints_the_greedy_continuation(trained_run: Path, capsys):
    (row,) = _sample(
        capsys,
        str(trained_run),
        "--prompt",
        "def main(",
        "--temperature",
        "0",
        "--keep-eot",
        "--max-new-tokens",
        "20",
    )
    # The same continuation by hand: the exported weights and the tokenizer the run dir now carries.
    model, enc = load_exported(trained_run).eval(), load_bpe(trained_run / "tokenizer")
    prompt = torch.tensor([[enc.eot_token, *enc.encode_ordinary("def main(")]])
    expected = model.generate(prompt, 20, temperature=0.0)[0, prompt.shape[1] :]
    assert row == {"prompt": "def main(", "completion": enc.decode(expected.tolist())}


def test_checkpoint_dir_samples_what_the_run_dir_samples(trained_run: Path, capsys):
    argv = (
        "--prompt",
        "import os",
        "--max-new-tokens",
        "12",
        "--seed",
        "3",
        "--top-k",
        "50",
        "--top-p",
        "0.9",
    )
    from_run = _sample(capsys, str(trained_run), *argv)
    from_checkpoint = _sample(capsys, str(trained_run / "checkpoints" / "step_00000004"), *argv)
    assert from_run == from_checkpoint and from_run[0]["completion"]


def test_a_run_stopped_before_its_export_samples_from_its_latest_checkpoint(
    trained_run: Path, tmp_path, capsys
):
    stopped = tmp_path / "stopped"  # what a run stopped by SIGTERM leaves: checkpoints, no model.safetensors
    shutil.copytree(trained_run / "checkpoints", stopped / "checkpoints")
    argv = ("--prompt", "def", "--max-new-tokens", "8", "--temperature", "0")
    assert _sample(capsys, str(stopped), *argv) == _sample(capsys, str(trained_run), *argv)


def test_a_checkpoint_without_checksums_loads_only_with_no_verify(trained_run: Path, tmp_path, capsys):
    old = tmp_path / "old"  # as written before checkpoints carried checksums
    shutil.copytree(trained_run / "checkpoints" / "step_00000004", old)
    (old / "checksums.json").unlink()
    argv = (str(old), "--prompt", "def", "--max-new-tokens", "4", "--temperature", "0")
    with pytest.raises(SystemExit) as exited:
        sample_main(list(argv))
    assert exited.value.code == 4 and "checksums.json" in capsys.readouterr().err
    assert _sample(capsys, *argv, "--no-verify") == _sample(capsys, str(trained_run), *argv[1:])


def test_prompts_file_gives_each_prompt_its_own_continuation_in_order(trained_run: Path, tmp_path, capsys):
    prompts = [
        "class A:\\n    def",
        "x = 1",
        "import",
    ]  # different token lengths: decoded in separate batches
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    greedy = ("--temperature", "0", "--max-new-tokens", "12")
    batch = _sample(capsys, str(trained_run), "--prompts-file", str(tmp_path / "prompts.txt"), *greedy)
    one_by_one = [
        _sample(capsys, str(trained_run), "--prompt", p.replace("\\n", "\n"), *greedy)[0] for p in prompts
    ]
    assert batch == one_by_one
    assert [row["prompt"] for row in batch] == ["class A:\n    def", "x = 1", "import"]


def test_too_long_a_request_names_max_seq_len(trained_run: Path, capsys):
    with pytest.raises(SystemExit) as exited:
        sample_main([str(trained_run), "--prompt", "x", "--max-new-tokens", "100"])
    assert exited.value.code == 2 and "max_seq_len=64" in capsys.readouterr().err  # a config error


def test_a_dir_without_weights_or_checkpoints_is_refused_by_name(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exited:
        sample_main([str(tmp_path), "--prompt", "x"])
    assert exited.value.code == 4 and str(tmp_path) in capsys.readouterr().err


def test_top_p_draws_only_from_the_nucleus():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    gen = torch.Generator().manual_seed(0)
    drawn = {sample_next(logits, 1.0, None, gen, top_p=0.7).item() for _ in range(200)}
    assert drawn == {0, 1}  # 0.5 alone is < 0.7; 0.5 + 0.3 reaches it, so 2 and 3 are never drawn
    everything = {sample_next(logits, 1.0, None, gen, top_p=1.0).item() for _ in range(400)}
    assert everything == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="top_p=1.5"):
        sample_next(logits, 1.0, None, gen, top_p=1.5)


def test_a_model_vocab_larger_than_the_tokenizers_never_samples_ids_the_tokenizer_lacks(
    trained_run: Path, wide_vocab_export: Path, capsys
):
    """The rows beyond the tokenizer are never drawn, even where they hold the largest logits."""
    enc = load_bpe(trained_run / "tokenizer")
    for sampling in (["--temperature", "0"], ["--temperature", "1", "--seed", "3"]):
        (row,) = _sample(
            capsys, str(wide_vocab_export), "--prompt", "def main(", "--max-new-tokens", "8", *sampling
        )
        assert len(enc.encode_ordinary(row["completion"])) > 0
