"""`python -m infer.perplexity`: bits per token and per byte, scored in windows of the model's context."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from infer.load import load
from infer.perplexity import main as perplexity_main
from model.scoring import plan_windows, token_logprobs

TEXT = 'def add(a, b):\n    """Sum."""\n    return a + b\n'


def test_perplexity_is_the_summed_token_nll_over_tokens_and_over_bytes(trained_run: Path, tmp_path, capsys):
    (tmp_path / "a.py").write_text(TEXT)
    perplexity_main([str(trained_run), str(tmp_path / "a.py"), "--json"])
    got = json.loads(capsys.readouterr().out)
    # By hand: one forward over <|endoftext|> + the text (it fits in one window), every text token predicted.
    loaded = load(trained_run)
    tokens = loaded.tokenizer.encode_ordinary(TEXT)
    assert len(tokens) < loaded.cfg.max_seq_len
    inputs = torch.tensor([[loaded.tokenizer.eot_token, *tokens]])
    nll = F.cross_entropy(loaded.model(inputs)[0, :-1].double(), inputs[0, 1:], reduction="sum").item()
    assert got["tokens"] == len(tokens) and got["bytes"] == len(TEXT.encode())
    assert got["bits_per_token"] == pytest.approx(nll / math.log(2) / len(tokens), rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(nll / math.log(2) / len(TEXT.encode()), rel=1e-5)


@pytest.mark.parametrize(("n", "window", "stride"), [(10, 4, 4), (10, 4, 3), (9, 4, 1), (3, 8, None)])
def test_windows_score_every_token_exactly_once_within_the_context(n, window, stride):
    tokens = list(range(100, 100 + n))
    windows = plan_windows(tokens, prefix=0, window=window, stride=stride)
    scored = [t for w in windows for t in w.targets[len(w.targets) - w.scored :]]
    assert scored == tokens
    for w in windows:
        assert len(w.inputs) <= window and len(w.inputs) == len(w.targets)
        assert w.inputs[1:] == w.targets[:-1]  # each target is the token after its input


def test_long_text_scores_every_token_and_the_first_window_alike_for_any_stride(trained_run: Path):
    loaded = load(trained_run)
    tokens = loaded.tokenizer.encode_ordinary(TEXT * 8)  # several windows of 64 tokens
    assert len(tokens) > 2 * loaded.cfg.max_seq_len
    disjoint = token_logprobs(loaded.model, tokens, loaded.tokenizer.eot_token)
    overlapping = token_logprobs(loaded.model, tokens, loaded.tokenizer.eot_token, stride=16)
    assert disjoint.shape == overlapping.shape == (len(tokens),)
    # The first window is the same forward pass in both; later tokens see different amounts of context.
    torch.testing.assert_close(disjoint[:16], overlapping[:16])


def test_missing_file_is_named(trained_run: Path, tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exited:
        perplexity_main([str(trained_run), str(tmp_path / "nope.txt")])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err == f"config error: FILE {tmp_path / 'nope.txt'}: " + (
        "No such file or directory (pass a readable text file)\n"
    )
