"""Learning-rate schedules and AdamW parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from model import ModelConfig, Transformer
from train.config import OptimConfig
from train.optim import LRSchedule, build_optimizer, lr_at, param_groups


def test_warmup_rises_linearly_to_peak():
    cfg = OptimConfig(lr=1e-3, warmup_steps=10, schedule="cosine")
    lrs = [lr_at(s, cfg, max_steps=100) for s in range(10)]
    assert lrs == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])


def test_cosine_falls_from_peak_to_floor():
    cfg = OptimConfig(lr=1e-3, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(10, cfg, 110) == pytest.approx(1e-3)
    assert lr_at(60, cfg, 110) == pytest.approx(1e-4 + 0.5 * 9e-4)  # halfway: the cosine's midpoint
    assert lr_at(110, cfg, 110) == pytest.approx(1e-4)
    lrs = [lr_at(s, cfg, 110) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_wsd_holds_then_decays_over_last_fraction():
    cfg = OptimConfig(lr=1e-3, warmup_steps=5, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert [lr_at(s, cfg, 100) for s in (5, 50, 79)] == pytest.approx([1e-3] * 3)
    assert lr_at(90, cfg, 100) == pytest.approx(0.5e-3)
    assert lr_at(100, cfg, 100) == pytest.approx(0.0)


def test_constant_stays_at_peak_after_warmup():
    cfg = OptimConfig(lr=3e-4, warmup_steps=4, schedule="constant")
    assert [lr_at(s, cfg, 10) for s in (4, 9, 1000)] == pytest.approx([3e-4] * 3)


def test_schedule_sets_every_group_and_resumes_its_position():
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)
    cfg = OptimConfig(lr=1e-3, warmup_steps=3, schedule="cosine")
    first = LRSchedule(opt, cfg, max_steps=20)
    lrs = [first.apply() for _ in range(7)]
    assert opt.param_groups[0]["lr"] == lrs[-1]
    second = LRSchedule(opt, cfg, max_steps=20)
    second.load_state_dict(first.state_dict())
    assert second.apply() == first.apply() == lr_at(7, cfg, 20)


def _tiny(tie: bool = False) -> Transformer:
    cfg = ModelConfig(
        vocab_size=64,
        d_model=32,
        n_layers=2,
        n_heads=2,
        n_kv_heads=1,
        head_dim=16,
        ffn_hidden=64,
        max_seq_len=16,
        tie_embeddings=tie,
    )
    return Transformer(cfg)


def test_no_decay_on_norms_embeddings_and_lambda():
    model = _tiny()
    decay, no_decay = param_groups(model, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "tok_embeddings.weight" in kept and "norm.weight" in kept
    assert {"layers.0.attention.lambda_proj.weight", "layers.1.attention_norm.weight"} <= kept
    assert {"layers.0.attention.q_proj.weight", "layers.1.feed_forward.w2.weight", "output.weight"} <= decayed
    assert not any("norm" in n or "lambda" in n or "embed" in n for n in decayed)
    assert len(decayed) + len(kept) == len(list(model.parameters()))


def test_tied_head_is_not_decayed_twice_and_fused_is_off_on_cpu():
    model = _tiny(tie=True)
    opt = build_optimizer(model, OptimConfig(), torch.device("cpu"))
    params = [p for g in opt.param_groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == len(list(model.parameters()))
    assert not opt.defaults["fused"]
    assert math.isclose(opt.defaults["betas"][1], 0.95)
