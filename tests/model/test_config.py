"""Config checks name the offending field; every size preset composes with every attention preset."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from model import ModelConfig, Transformer, validate_model_config

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(n_heads=6, n_kv_heads=4), "model.n_heads=6 must be divisible by model.n_kv_heads=4"),
        (dict(head_dim=63), "model.head_dim=63"),
        (dict(attention="diff_v3"), "model.attention='diff_v3'"),
        (dict(pairing="halves"), "model.pairing='halves'"),
        (dict(lambda_mode="tanh"), "model.lambda_mode='tanh'"),
        (dict(attn_impl="triton"), "model.attn_impl='triton'"),
        (dict(d_model=0), "model.d_model=0"),
        (dict(attention="baseline", baseline_head_factor=1.25), "model.baseline_head_factor=1.25"),
        (dict(attention="diff_v2", baseline_head_factor=2.0), "model.baseline_head_factor=2.0"),
        (dict(attention="baseline", pairing="cross_group"), "model.pairing='cross_group'"),
        (dict(attention="diff_v1", n_heads=6, n_kv_heads=3), "model.n_kv_heads=3"),
        (dict(pairing="cross_group", n_kv_heads=1), "model.pairing='cross_group'"),
        (dict(moe_experts=4, moe_top_k=5), "model.moe_top_k=5 must be in"),
        (dict(moe_experts=4, moe_first_dense=4), "model.moe_first_dense=4 leaves no MoE block"),
        (dict(moe_experts=-1), "model.moe_experts=-1"),
        (dict(moe_aux_coef=-0.1), "model.moe_aux_coef=-0.1"),
        (dict(moe_capacity_factor=-0.5), "model.moe_capacity_factor=-0.5 must be a finite number >= 0"),
        (dict(moe_impl="cutlass"), "model.moe_impl='cutlass'"),
    ],
)
def test_bad_config_raises_naming_the_field(overrides, message):
    cfg = dataclasses.replace(ModelConfig(), **overrides)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        validate_model_config(cfg)
    with pytest.raises(ValueError, match="model\\."):
        Transformer(cfg)


SIZES = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
ATTENTIONS = sorted(p.stem for p in (CONF / "attention").glob("*.yaml"))


def test_the_presets_the_issue_names_exist():
    assert {"tiny", "125m", "350m", "760m", "1.3b", "3b", "7b"} <= set(SIZES)
    assert {
        "baseline",
        "baseline_1p5h",
        "baseline_2h",
        "diff_v1",
        "diff_v2",
        "diff_v2_cross_group",
        "diff_v2_no_lambda",
        "diff_v2_linear_lambda",
    } <= set(ATTENTIONS)


def test_every_size_composes_with_every_attention_preset():
    from omegaconf import OmegaConf

    from conf import compose, hydra_session

    seen = {}
    with hydra_session():
        for size in SIZES:
            for attention in ATTENTIONS:
                model_cfg = OmegaConf.to_object(compose([f"model={size}", f"attention={attention}"]).model)
                validate_model_config(model_cfg)
                assert (model_cfg.name, model_cfg.variant) == (size, attention)
                if attention in ("baseline", "baseline_1p5h", "baseline_2h", "diff_v2"):
                    with torch.device("meta"):  # shapes and counts without allocating 7B parameters
                        seen[size, attention] = Transformer(model_cfg).num_params()
    # the size names are honest for the baseline, and variants order as the spec says
    named = {"125m": 125e6, "350m": 350e6, "760m": 760e6, "1.3b": 1.3e9, "3b": 3e9, "7b": 7e9}
    for size, expected in named.items():
        assert 0.85 < seen[size, "baseline"] / expected < 1.15, (size, seen[size, "baseline"])
    for size in SIZES:
        assert seen[size, "baseline"] < seen[size, "baseline_1p5h"] < seen[size, "baseline_2h"]
        assert seen[size, "baseline_1p5h"] < seen[size, "diff_v2"] < seen[size, "baseline_2h"]
