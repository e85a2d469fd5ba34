"""`python -m model.summary`: the parameter split per attention preset follows the spec's formulas, and the
printed ratios to the baseline and the 2h baseline are the ones the blog's claims are about."""

from __future__ import annotations

import pytest

from conf import attention_presets
from model.summary import main, summarize_model


@pytest.fixture(scope="module")
def at_125m():
    configs = attention_presets("125m")
    return {name: summarize_model(name, cfg, 2048, 2) for name, cfg in configs.items()}, configs


def test_attention_parameters_follow_the_spec(at_125m) -> None:
    summaries, configs = at_125m
    c = configs["baseline"]
    D, h, h_kv, d, L = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.n_layers
    base = summaries["baseline"].params
    assert base["attention"] == L * (D * h * d + 2 * D * h_kv * d + h * d * D)
    v2 = summaries["diff_v2"].params
    assert v2["attention"] == base["attention"] + L * (D * h * d + D * h)  # second query set + lambda_proj
    assert (v2["q"], v2["o"], v2["lambda"]) == (2 * base["q"], base["o"], L * D * h)
    two_h = summaries["baseline_2h"].params
    # V2 keeps the 2h baseline's Q, K, V and halves o_proj: 25% of Q + O, 20% of the attention at h_kv = h/2
    assert (v2["q"] + v2["o"]) / (two_h["q"] + two_h["o"]) == pytest.approx(0.75)
    assert v2["attention"] / two_h["attention"] == pytest.approx(0.803, abs=1e-3)
    assert summaries["diff_v2_no_lambda"].params["lambda"] == 0


def test_parts_add_up_to_the_total_and_the_kv_cache_is_the_baselines(at_125m) -> None:
    summaries, _ = at_125m
    for s in summaries.values():
        p = s.params
        assert p["embed"] + p["head"] + p["attention"] + p["ffn"] + p["norms"] == p["total"], s.preset
        # h_kv heads of keys and values per layer, bf16: every variant caches the same
        assert s.kv_bytes_per_token == summaries["baseline"].kv_bytes_per_token == 12 * 2 * 6 * 64 * 2
    assert summaries["diff_v2"].flops_per_token > summaries["baseline"].flops_per_token


def test_cli_prints_every_preset_with_ratios_to_both_baselines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--size", "mini"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[1].split()
    assert {"attn/base", "attn/2h", "total/base", "FLOPs/tok", "KV_B/tok"} <= set(header)
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert set(rows) >= {
        "baseline",
        "baseline_1p5h",
        "baseline_2h",
        "diff_v1",
        "diff_v2",
        "diff_v2_no_lambda",
    }
    col = header.index("attn/2h")
    assert rows["baseline_2h"][col] == "1.000" and float(rows["diff_v2"][col]) < 1.0


def test_an_unknown_size_names_the_missing_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--size", "nope"]) == 2
    assert "nope.yaml" in capsys.readouterr().err
