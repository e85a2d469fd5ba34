"""DiagnosticsRecorder returns every documented key, per layer, with values in their possible ranges."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from model import DiagnosticsRecorder, ModelConfig, Transformer

CFG = ModelConfig(
    vocab_size=64, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8, ffn_hidden=64, max_seq_len=32
)
PER_LAYER = ("act_max", "context_rms", "context_rms_min", "context_rms_max", "qk_logit_max", "sink_mass")


def record(variant: dict, batch: int = 2, n: int = 16) -> tuple[Transformer, dict[str, float]]:
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(CFG, **variant))
    x = torch.randint(0, 64, (batch, n), generator=torch.Generator().manual_seed(1))
    with DiagnosticsRecorder(model) as rec:
        model(x)
    return model, rec.summary()


@pytest.mark.parametrize(
    "variant,has_lambda",
    [({}, True), (dict(attention="diff_v1"), True), (dict(attention="baseline"), False)],
)
def test_summary_has_every_key_with_sane_values(variant, has_lambda):
    model, out = record(variant)
    for layer in range(CFG.n_layers):
        for stat in PER_LAYER:
            assert math.isfinite(out[f"diag/{stat}/L{layer}"]), (stat, layer)
        assert 0.0 <= out[f"diag/sink_mass/L{layer}"] <= 1.0
        assert out[f"diag/act_max/L{layer}"] > 0
        rms = [out[f"diag/context_rms{s}/L{layer}"] for s in ("_min", "", "_max")]
        assert 0 < rms[0] <= rms[1] <= rms[2]
        assert (f"diag/lambda_mean/L{layer}" in out) == has_lambda
    for key in ("diag/act_max/max", "diag/qk_logit_max/max", "diag/context_rms/mean", "diag/sink_mass/mean"):
        assert key in out
    assert out["diag/act_max/max"] == max(out[f"diag/act_max/L{i}"] for i in range(CFG.n_layers))
    if variant == {}:  # DIFF V2: sigmoid(lambda) per token and head
        for layer in range(CFG.n_layers):
            assert 0 < out[f"diag/lambda_mean/L{layer}"] < 1 and out[f"diag/lambda_std/L{layer}"] > 0
    if variant == dict(attention="diff_v1"):  # the scalar lambda: lambda_init + a small learned part
        attn = model.layers[2].attention
        assert out["diag/lambda_mean/L2"] == pytest.approx(attn.lambda_full().item())
        assert out["diag/lambda_std/L2"] == 0.0


def test_values_match_direct_computations():
    torch.manual_seed(0)
    model = Transformer(CFG)
    x = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(1))
    block_out, ctx = [], []
    hooks = [model.layers[0].register_forward_hook(lambda m, a, o: block_out.append(o))]
    hooks.append(model.layers[0].attention.o_proj.register_forward_pre_hook(lambda m, a: ctx.append(a[0])))
    with DiagnosticsRecorder(model) as rec:
        model(x)
    for h in hooks:
        h.remove()
    out = rec.summary()
    assert out["diag/act_max/L0"] == pytest.approx(block_out[0].abs().max().item())
    per_head = ctx[0].unflatten(-1, (4, 8)).pow(2).mean(-1).sqrt().mean(dim=(0, 1))
    assert out["diag/context_rms/L0"] == pytest.approx(per_head.mean().item(), rel=1e-5)
    assert out["diag/context_rms_max/L0"] == pytest.approx(per_head.max().item(), rel=1e-5)
    # lambda from the projection of the normed block input
    attn = model.layers[0].attention
    h = model.layers[0].attention_norm(model.tok_embeddings(x))
    lam = torch.sigmoid(attn.lambda_proj(h))
    assert out["diag/lambda_mean/L0"] == pytest.approx(lam.mean().item(), rel=1e-5)
    # qk logits: recomputed from the rotated q and k; the largest causal logit
    q, k = attn.rotated_qk(h, (model.rope_cos[:12], model.rope_sin[:12]))
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(8)
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    logits = logits.masked_fill(~causal, float("-inf"))
    assert out["diag/qk_logit_max/L0"] == pytest.approx(logits.max().item(), rel=1e-5)
    # sink mass: probability on key 0 for queries 1.., averaged over queries and the 2h maps
    sink = torch.softmax(logits, dim=-1)[:, :, 1:, 0].mean()
    assert out["diag/sink_mass/L0"] == pytest.approx(sink.item(), rel=1e-5)


def test_sink_mass_sees_a_head_that_attends_only_to_the_first_token():
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(CFG, attention="baseline"))
    attn = model.layers[0].attention
    x = torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # queries 0 and keys 0: uniform attention, sink mass = mean over t of 1/(t+1)
        attn.q_proj.weight.zero_()
    with DiagnosticsRecorder(model) as rec:
        model(x)
    uniform = sum(1.0 / (t + 1) for t in range(1, 16)) / 15
    assert rec.summary()["diag/sink_mass/L0"] == pytest.approx(uniform, rel=1e-5)


def test_hooks_are_removed_on_exit():
    torch.manual_seed(0)
    model = Transformer(CFG)
    with DiagnosticsRecorder(model):
        pass
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
