"""Whole-model behaviour for every attention variant: causality, parameter counts, FLOPs, init, decoding,
and that each variant can learn."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from model import ModelConfig, Transformer

SMALL = ModelConfig(
    name="test",
    vocab_size=64,
    d_model=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    head_dim=8,
    ffn_hidden=64,
    max_seq_len=32,
)
VARIANTS = {
    "baseline": dict(attention="baseline"),
    "baseline_1p5h": dict(attention="baseline", baseline_head_factor=1.5),
    "baseline_2h": dict(attention="baseline", baseline_head_factor=2.0),
    "diff_v1": dict(attention="diff_v1"),
    "diff_v2": dict(attention="diff_v2"),
    "diff_v2_cross_group": dict(attention="diff_v2", pairing="cross_group"),
    "diff_v2_no_lambda": dict(attention="diff_v2", lambda_mode="none"),
    "diff_v2_linear_lambda": dict(attention="diff_v2", lambda_mode="linear"),
}


def config(variant: str, **overrides) -> ModelConfig:
    return dataclasses.replace(SMALL, **VARIANTS[variant], **overrides)


def build(variant: str, seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(config(variant, **overrides))


def tokens(batch: int = 2, n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, SMALL.vocab_size, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", VARIANTS)
def test_changing_later_tokens_leaves_earlier_logits_unchanged(variant):
    model, x = build(variant), tokens()
    t = 7
    changed = x.clone()
    changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % SMALL.vocab_size
    before, after = model(x), model(changed)
    torch.testing.assert_close(before[:, : t + 1], after[:, : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(before[:, t + 1 :], after[:, t + 1 :])


def spec_attention_params(cfg: ModelConfig) -> int:
    """Attention parameters from the spec's formulas (diff_v2.md, 'Parameters')."""
    big_d, d, h, h_kv = cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    if cfg.attention == "baseline":
        hb = int(cfg.baseline_head_factor * h)
        return big_d * hb * d + 2 * big_d * h_kv * d + hb * d * big_d
    baseline = big_d * h * d + 2 * big_d * h_kv * d + h * d * big_d
    if cfg.attention == "diff_v1":  # baseline projections + 4 lambda vectors of d + RMSNorm weight of 2d
        return baseline + 4 * d + 2 * d
    lam = 0 if cfg.lambda_mode == "none" else big_d * h
    return baseline + big_d * h * d + lam  # second query set + lambda


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("variant", VARIANTS)
def test_num_params_equals_the_spec_formulas(variant, tie):
    cfg = config(variant, tie_embeddings=tie)
    model = Transformer(cfg)
    big_d, vocab = cfg.d_model, cfg.vocab_size
    per_layer = spec_attention_params(cfg) + 3 * big_d * cfg.ffn_hidden + 2 * big_d  # + two RMSNorm weights
    body = cfg.n_layers * per_layer + big_d  # + final norm
    expected = vocab * big_d + body + (0 if tie else vocab * big_d)
    assert model.num_params() == expected
    assert model.num_params(exclude_embeddings=True) == expected - vocab * big_d


def test_diff_v2_attention_params_match_the_1p5h_baseline_and_are_a_quarter_below_2h():
    v2 = spec_attention_params(config("diff_v2"))
    assert spec_attention_params(config("baseline_1p5h")) == v2 - SMALL.d_model * SMALL.n_heads
    w = SMALL.d_model * SMALL.n_heads * SMALL.head_dim
    assert spec_attention_params(config("baseline_2h")) - v2 == w - SMALL.d_model * SMALL.n_heads


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("variant", ["baseline", "baseline_2h", "diff_v1", "diff_v2", "diff_v2_no_lambda"])
def test_flops_per_token_within_5_percent_of_torch_flop_counter(variant, tie):
    model = build(variant, tie_embeddings=tie)
    x = tokens(batch=2, n=32)
    # The CPU fused SDPA kernel is not registered with the flop counter; the math backend is made of bmm's.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits = model(x)
        F.cross_entropy(logits.flatten(0, 1), x.flatten()).backward()
    measured = counter.get_total_flops() / x.numel()
    assert model.flops_per_token(32) == pytest.approx(measured, rel=0.05)


@pytest.mark.parametrize("variant", ["baseline", "diff_v1", "diff_v2"])
@pytest.mark.parametrize("tie", [False, True])
def test_meta_device_init_equals_direct_init(variant, tie):
    torch.manual_seed(5)
    direct = Transformer(config(variant, tie_embeddings=tie))
    torch.manual_seed(5)
    with torch.device("meta"):
        lazy = Transformer(config(variant, tie_embeddings=tie))
    lazy.to_empty(device="cpu")
    lazy.init_weights()
    direct_state, lazy_state = direct.state_dict(), lazy.state_dict()
    assert direct_state.keys() == lazy_state.keys()
    for name, value in direct_state.items():
        torch.testing.assert_close(lazy_state[name], value, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(lazy.rope_cos, direct.rope_cos, rtol=0, atol=0)
    x = tokens()
    torch.testing.assert_close(lazy(x), direct(x), rtol=0, atol=0)


def test_init_scales_residual_projections_and_keeps_the_reference_lambda_init():
    model = build("diff_v2", n_layers=8, d_model=256, ffn_hidden=512, n_heads=8, n_kv_heads=4)
    std = SMALL.init_std
    assert model.layers[0].attention.q_proj.weight.std().item() == pytest.approx(std, rel=0.05)
    for layer in model.layers:
        for w in (layer.attention.o_proj.weight, layer.feed_forward.w2.weight):
            assert w.std().item() == pytest.approx(std / 4.0, rel=0.05)  # 1 / sqrt(2 * 8 layers)
        # lambda_proj keeps nn.Linear's default: U(-1/sqrt(D), 1/sqrt(D)), std 1/sqrt(3D)
        lam = layer.attention.lambda_proj.weight
        assert lam.abs().max().item() <= 1 / 16
        assert lam.std().item() == pytest.approx(1 / (3 * 256) ** 0.5, rel=0.1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_kv_cache_decoding_gives_the_full_forward_logits(variant):
    model, x = build(variant), tokens(n=14)
    full = model(x)
    caches = model.new_kv_caches(batch=2, max_len=14)
    # the cache holds the h_kv key heads only, whatever the number of query heads
    assert caches[0].k.shape == (2, 14, SMALL.n_kv_heads, SMALL.head_dim)
    pieces = [model(x[:, :5], caches), model(x[:, 5:8], caches)]  # prefill, then a 3-token chunk
    pieces += [model(x[:, i : i + 1], caches) for i in range(8, 14)]  # then one token at a time
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_greedy_generate_equals_repeated_argmax_of_the_full_forward():
    model, prompt = build("diff_v2"), tokens(n=4)
    out = model.generate(prompt, max_new_tokens=8, temperature=0.0)
    expected = prompt
    for _ in range(8):
        expected = torch.cat([expected, model(expected)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, expected)
    assert torch.equal(model.generate(prompt, 8, temperature=1.0, top_k=1), expected)


def test_sampling_draws_only_from_the_top_k_and_follows_the_generator():
    model, prompt = build("diff_v2"), tokens(batch=1, n=4)
    allowed = set(model(prompt)[0, -1].topk(3).indices.tolist())
    firsts = set()
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        out = model.generate(prompt, 1, temperature=2.0, top_k=3, generator=gen)
        firsts.add(out[0, -1].item())
    assert firsts <= allowed and len(firsts) > 1
    a = model.generate(prompt, 6, temperature=1.0, generator=torch.Generator().manual_seed(0))
    b = model.generate(prompt, 6, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_model_overfits_one_fixed_batch(variant):
    model, x = build(variant), tokens(batch=4, n=16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(60):
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2, f"{variant}: loss {loss.item():.3f} after 60 steps (starts near ln 64 = 4.16)"


def test_diff_v1_sub_norm_takes_the_models_norm_eps():
    model = Transformer(ModelConfig(attention="diff_v1", norm_eps=1e-3))
    assert {layer.attention.subln.eps for layer in model.layers} == {1e-3}
