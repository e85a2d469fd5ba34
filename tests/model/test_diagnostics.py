"""DiagnosticsRecorder: every documented key per layer, and values that the claims can be checked against
(context RMS relative to the values read, sink mass of later queries, activation outliers, qk logits)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from model import DiagnosticsRecorder, ModelConfig, Transformer

CFG = ModelConfig(
    vocab_size=64, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8, ffn_hidden=64, max_seq_len=32
)
PER_LAYER = (
    "act_max",
    "act_ratio",
    "context_rms",
    "context_rms_min",
    "context_rms_max",
    "qk_logit_max",
    "sink_mass",
    "sink_mass_max",
)
VARIANTS = {
    "baseline": dict(attention="baseline"),
    "baseline_2h": dict(attention="baseline", baseline_head_factor=2.0),
    "diff_v1": dict(attention="diff_v1"),
    "diff_v2": {},
    "diff_v2_no_lambda": dict(lambda_mode="none"),
    "diff_v2_cross_group": dict(pairing="cross_group"),
}


def record(
    variant: dict, batch: int = 2, n: int = 16, seed: int = 0, cfg: ModelConfig = CFG
) -> tuple[Transformer, DiagnosticsRecorder]:
    torch.manual_seed(seed)
    model = Transformer(dataclasses.replace(cfg, **variant))
    x = torch.randint(0, cfg.vocab_size, (batch, n), generator=torch.Generator().manual_seed(seed + 1))
    with DiagnosticsRecorder(model, sequences=batch) as rec:
        model(x)
    return model, rec


@pytest.mark.parametrize("name", ["baseline", "diff_v1", "diff_v2"])
def test_summary_has_every_key_per_layer_and_overall(name: str) -> None:
    _, rec = record(VARIANTS[name])
    out = rec.summary()
    for layer in range(CFG.n_layers):
        for stat in PER_LAYER:
            assert math.isfinite(out[f"diag/{stat}/L{layer}"]), (stat, layer)
        assert 0.0 <= out[f"diag/sink_mass/L{layer}"] <= out[f"diag/sink_mass_max/L{layer}"] <= 1.0
        rms = [out[f"diag/context_rms{s}/L{layer}"] for s in ("_min", "", "_max")]
        assert 0 < rms[0] <= rms[1] <= rms[2]
        assert (f"diag/lambda_mean/L{layer}" in out) == (name != "baseline")
    overall = ("act_max/max", "act_ratio/max", "qk_logit_max/max", "context_rms/mean", "context_rms_min/min")
    for key in (*overall, "sink_mass/mean", "sink_mass_max/max"):
        assert f"diag/{key}" in out
    assert out["diag/act_ratio/max"] == max(out[f"diag/act_ratio/L{i}"] for i in range(CFG.n_layers))


@pytest.mark.parametrize("name", ["baseline", "baseline_2h"])
@pytest.mark.parametrize("seed", range(4))
def test_softmax_context_rms_lies_within_one_over_sqrt_n_and_one(name: str, seed: int) -> None:
    """An average of value vectors is never longer than their (attention-weighted) RMS: <= 1 exactly. Random
    keys spread attention over ~all n tokens, whose values are near orthogonal: >= ~1/sqrt(n)."""
    n = 32
    wide = dataclasses.replace(CFG, head_dim=32, max_seq_len=n)
    _, rec = record(VARIANTS[name], n=n, seed=seed, cfg=wide)
    for key, per_head in rec.per_head().items():
        if key.startswith("context_rms"):
            assert per_head.min() >= 1 / math.sqrt(n) and per_head.max() <= 1.0, (key, per_head)


@pytest.mark.parametrize("seed", range(4))
def test_diff_v2_context_rms_lies_within_zero_and_sqrt2(seed: int) -> None:
    _, rec = record(VARIANTS["diff_v2"], n=32, seed=seed, cfg=dataclasses.replace(CFG, max_seq_len=32))
    heads = torch.cat([v for k, v in rec.per_head().items() if k.startswith("context_rms")])
    assert heads.numel() == CFG.n_layers * CFG.n_heads
    assert heads.min() > 0 and heads.max() < math.sqrt(2)


def test_no_lambda_context_rms_is_smaller_than_diff_v2_at_init() -> None:
    """Blog ablation 2: attn1 - attn2 of two near-uniform maps nearly cancels; lambda ~ 0.5 leaves half."""
    for seed in range(3):
        v2 = record(VARIANTS["diff_v2"], seed=seed)[1].summary()["diag/context_rms/mean"]
        none = record(VARIANTS["diff_v2_no_lambda"], seed=seed)[1].summary()["diag/context_rms/mean"]
        assert none < 0.5 * v2


def test_diff_v1_context_rms_is_read_before_its_per_head_norm() -> None:
    """Scaling V1's RMSNorm weight scales what o_proj reads, not the difference the heads compute."""
    model, rec = record(VARIANTS["diff_v1"])
    before = rec.summary()["diag/context_rms/L1"]
    with torch.no_grad():
        model.layers[1].attention.subln.weight.mul_(10.0)
    x = torch.randint(0, CFG.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with DiagnosticsRecorder(model, sequences=2) as again:
        model(x)
    assert again.summary()["diag/context_rms/L1"] == pytest.approx(before, rel=1e-5)


def test_context_rms_matches_its_definition_for_the_baseline() -> None:
    """RMS(head output) / sqrt(sum_t' p(t, t') mean(v_t'^2)), per query, then the mean over queries."""
    model, rec = record(VARIANTS["baseline"], batch=1, n=12)
    attn, block = model.layers[0].attention, model.layers[0]
    x = torch.randint(0, CFG.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    h = block.attention_norm(model.tok_embeddings(x))
    q, k = attn.rotated_qk(h, (model.rope_cos[:12], model.rope_sin[:12]))
    v = attn.v_proj(h).unflatten(-1, (2, 8)).repeat_interleave(2, dim=2)  # per query head
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(8)
    probs = torch.softmax(logits.masked_fill(~torch.ones(12, 12, dtype=torch.bool).tril(), -math.inf), -1)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v)
    read = torch.einsum("bhqk,bkh->bqh", probs, v.pow(2).mean(-1))
    expected = (out.pow(2).mean(-1).sqrt() / read.sqrt()).mean(dim=(0, 1))
    torch.testing.assert_close(rec.per_head()["context_rms/L0"], expected.detach(), rtol=1e-4, atol=1e-6)


def test_a_uniform_head_reads_about_one_over_position_as_sink_mass() -> None:
    model = Transformer(dataclasses.replace(CFG, attention="baseline"))
    with torch.no_grad():  # zero queries: every map is uniform, query t reads 1 / (t + 1) on token 0
        model.layers[0].attention.q_proj.weight.zero_()
    x = torch.randint(0, CFG.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    with DiagnosticsRecorder(model) as rec:
        model(x)
    later = [1.0 / (t + 1) for t in range(8, 16)]  # the later half of the queries
    assert rec.summary()["diag/sink_mass/L0"] == pytest.approx(sum(later) / len(later), rel=1e-5)
    assert rec.summary()["diag/sink_mass_max/L0"] < 2 / 16


def test_a_head_forced_onto_the_first_token_reads_about_one_and_stands_out_in_the_max() -> None:
    """Queries and keys live in the last rotary pair, which a huge rope_theta leaves unrotated. Every token
    carries channel 0 (-> a constant query in head 0 only); token 0 alone carries channel 1 (-> its key)."""
    cfg = dataclasses.replace(CFG, attention="baseline", rope_theta=1e12)
    model = Transformer(cfg)
    d = cfg.head_dim
    with torch.no_grad():
        emb = model.tok_embeddings.weight
        emb[:, :2] = 0.0
        emb[:, 0] = 1.0
        emb[0, 1] = 1.0
        attn = model.layers[0].attention
        attn.q_proj.weight.zero_()
        attn.q_proj.weight[d - 2, 0] = 30.0  # head 0 only
        attn.k_proj.weight.zero_()
        attn.k_proj.weight[d - 2, 1] = 30.0  # kv head 0, read by heads 0 and 1
    x = torch.randint(1, CFG.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    x[0, 0] = 0
    with DiagnosticsRecorder(model) as rec:
        model(x)
    sinks = rec.per_head()["sink_mass/L0"]
    assert sinks[0] > 0.99  # the forced head
    assert sinks[1:].max() < 2 / 16  # zero queries: uniform
    out = rec.summary()
    assert out["diag/sink_mass_max/L0"] == pytest.approx(sinks[0].item())
    assert out["diag/sink_mass/L0"] == pytest.approx(sinks.mean().item())


def test_activation_ratio_and_qk_logit_match_direct_computations() -> None:
    model, rec = record(VARIANTS["diff_v2"], batch=1, n=12)
    x = torch.randint(0, CFG.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    block_out, _ = model.layers[0](model.tok_embeddings(x), (model.rope_cos[:12], model.rope_sin[:12]))
    out = rec.summary()
    peak = block_out.abs().max()
    assert out["diag/act_max/L0"] == pytest.approx(peak.item(), rel=1e-5)
    assert out["diag/act_ratio/L0"] == pytest.approx((peak / block_out.pow(2).mean().sqrt()).item(), rel=1e-5)
    attn = model.layers[0].attention
    h = model.layers[0].attention_norm(model.tok_embeddings(x))
    q, k = attn.rotated_qk(h, (model.rope_cos[:12], model.rope_sin[:12]))
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(8)
    logits = logits.masked_fill(~torch.ones(12, 12, dtype=torch.bool).tril(), -math.inf)
    assert out["diag/qk_logit_max/L0"] == pytest.approx(logits.max().item(), rel=1e-5)
    lam = torch.sigmoid(attn.lambda_proj(h))
    assert out["diag/lambda_mean/L0"] == pytest.approx(lam.mean().item(), rel=1e-5)


def test_diff_v1_lambda_is_its_scalar() -> None:
    model, rec = record(VARIANTS["diff_v1"])
    out = rec.summary()
    assert out["diag/lambda_mean/L2"] == pytest.approx(model.layers[2].attention.lambda_full().item())
    assert out["diag/lambda_std/L2"] == 0.0


def test_hooks_are_removed_on_exit() -> None:
    model = Transformer(CFG)
    with DiagnosticsRecorder(model):
        pass
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_with_document_masks_the_maps_stay_within_documents_and_the_sink_is_each_documents_first() -> None:
    """Zero queries: uniform within the document, so query t reads 1 / (t - start + 1) on its document's
    first token; the default (no doc_mask) would read 1 / (t + 1) on token 0."""
    cfg = dataclasses.replace(CFG, attention="baseline", doc_mask=True, doc_positions=True, eot_token=0)
    model = Transformer(cfg)
    with torch.no_grad():
        model.layers[0].attention.q_proj.weight.zero_()
    x = torch.randint(1, CFG.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    x[0, 5] = 0  # the first document ends at token 5; the second starts at 6
    with DiagnosticsRecorder(model) as rec:
        model(x)
    expected = [1.0 / (t - 6 + 1) for t in range(8, 16)]
    assert rec.summary()["diag/sink_mass/L0"] == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    for key, per_head in rec.per_head().items():
        if key.startswith("context_rms"):
            assert per_head.max() <= 1.0, key  # still an average of the values read, within the document


@pytest.mark.parametrize("name", ["baseline", "diff_v2"])
def test_attention_figures_cover_every_sequence_read_means_and_maxima(name: str) -> None:
    """Over several sequences, qk_logit_max is the largest of the sequences' maxima and the context RMS and
    sink mass the mean of theirs (equal lengths): not the first sequence's sample."""
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(CFG, **VARIANTS[name]))
    x = torch.randint(0, CFG.vocab_size, (8, 16), generator=torch.Generator().manual_seed(1))
    singles = []
    for row in x:
        with DiagnosticsRecorder(model) as rec:
            model(row[None])
        singles.append(rec.summary())
    with DiagnosticsRecorder(model) as rec:  # the default reads 8 sequences
        model(x)
    together = rec.summary()
    qk_max = max(s["diag/qk_logit_max/max"] for s in singles)
    assert together["diag/qk_logit_max/max"] == pytest.approx(qk_max)
    for key in ("diag/context_rms/L1", "diag/sink_mass/L2"):
        assert together[key] == pytest.approx(sum(s[key] for s in singles) / len(singles), rel=1e-5)
    assert len({round(s["diag/context_rms/L1"], 6) for s in singles}) > 1  # the sequences do differ
    with DiagnosticsRecorder(model, sequences=1) as first:
        model(x)
    first_rms = first.summary()["diag/context_rms/L1"]
    assert first_rms == pytest.approx(singles[0]["diag/context_rms/L1"], rel=1e-5)
