"""The same model code on CUDA: SDPA's GPU kernels with GQA, bf16, and the KV cache (lent-GPU runs only)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model import ModelConfig, Transformer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CFG = ModelConfig(vocab_size=512, d_model=256, n_layers=2, n_heads=8, n_kv_heads=2, max_seq_len=256)
VARIANTS = [dict(attention="baseline"), dict(attention="diff_v1"), {}, dict(pairing="cross_group")]


@pytest.mark.parametrize("variant", VARIANTS, ids=["baseline", "diff_v1", "diff_v2", "diff_v2_cross_group"])
def test_cuda_bf16_matches_cpu_fp32(variant):
    torch.manual_seed(0)
    cpu = Transformer(dataclasses.replace(CFG, **variant))
    cpu.init_weights()
    gpu = Transformer(dataclasses.replace(CFG, **variant)).cuda()
    gpu.load_state_dict(cpu.state_dict())
    tokens = torch.randint(0, CFG.vocab_size, (2, 256), generator=torch.Generator().manual_seed(1))
    expected = cpu(tokens)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = gpu(tokens.cuda()).float().cpu()
    torch.testing.assert_close(got, expected, rtol=5e-2, atol=5e-2)
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.95


def test_cuda_kv_cache_decoding_equals_full_forward():
    torch.manual_seed(0)
    model = Transformer(CFG).cuda()
    model.init_weights()
    x = torch.randint(0, CFG.vocab_size, (2, 40), device="cuda")
    caches = model.new_kv_caches(2, 40)
    assert caches[0].k.shape[2] == CFG.n_kv_heads  # h_kv heads cached, not DIFF V2's 2h query heads
    with torch.no_grad():
        steps = [model(x[:, :16], caches)] + [model(x[:, i : i + 1], caches) for i in range(16, 40)]
        torch.testing.assert_close(torch.cat(steps, dim=1), model(x), rtol=1e-3, atol=1e-3)
    out = model.generate(x[:, :16], 8, temperature=0.0)
    assert out.shape == (2, 24) and torch.equal(out[:, :16], x[:, :16])


def test_cuda_moe_grouped_matmul_matches_the_per_expert_loop_in_bf16():
    cfg = dataclasses.replace(CFG, moe_experts=8, moe_top_k=2, moe_hidden=128)
    results = []
    for impl in ("grouped", "loop"):  # grouped: torch._grouped_mm on compute capability >= 9.0
        torch.manual_seed(0)
        model = Transformer(dataclasses.replace(cfg, moe_impl=impl)).cuda()
        tokens = torch.randint(0, CFG.vocab_size, (2, 256), generator=torch.Generator().manual_seed(1))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(tokens.cuda())
        logits.float().square().mean().backward()
        results.append((logits.float().cpu(), model.layers[0].feed_forward.experts.w1.grad.float().cpu()))
    (logits_g, grad_g), (logits_l, grad_l) = results
    torch.testing.assert_close(logits_g, logits_l, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(grad_g, grad_l, rtol=5e-2, atol=1e-4)
