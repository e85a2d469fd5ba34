"""bench.decode: it generates what model.generate does (greedy), times prefill and decode apart, and prints
tokens/s with ratios to both baselines for every batch size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.decode import VARIANTS, main, timed_generate
from model import ModelConfig, Transformer


def test_timed_generation_produces_the_greedy_tokens_of_generate() -> None:
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(vocab_size=64, d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, max_seq_len=32)
    )
    prompt = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    tokens, prefill, decode = timed_generate(model, prompt, 6)
    assert torch.equal(tokens, model.generate(prompt, 6, temperature=0.0))
    assert prefill > 0 and decode > 0


def test_bench_prints_prefill_and_decode_per_variant_and_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "decode.json"
    main(["--size", "mini", "--prompt", "8", "--new", "3", "--batches", "1", "2", "--repeats", "1"])
    main(
        [
            "--size",
            "mini",
            "--prompt",
            "8",
            "--new",
            "3",
            "--batches",
            "1",
            "--repeats",
            "1",
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert printed.count("batch 1") == 2 and "batch 2" in printed
    lines = [line.split() for line in printed.splitlines() if line.startswith("  ")]
    assert len(lines) == 2 * 2 * len(VARIANTS) + 2 * len(VARIANTS)
    assert {(line[0], line[1]) for line in lines} == {(p, v) for p in ("prefill", "decode") for v in VARIANTS}
    baseline_rows = [line for line in lines if line[1] == "baseline"]
    assert all(line[6] == "1.00" for line in baseline_rows)  # its own ratio, measured in the same run
    figures = json.loads(out.read_text())
    assert {(f["phase"], f["attention"]) for f in figures} == {
        (p, v) for p in ("prefill", "decode") for v in VARIANTS
    }
    assert all(f["tokens_per_s"] > 0 for f in figures)
