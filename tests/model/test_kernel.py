"""The attention kernel: the flash-attn code path (flash's [B, N, heads, d] layout) equals the SDPA path."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import model.kernel as kernel
from model import ModelConfig, Transformer

CFG = ModelConfig(
    vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_hidden=64, max_seq_len=32
)


def standin_flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
    """flash_attn_func's contract, built on SDPA: [B, N, heads, d] inputs and output, one head size for q, k
    and v, contiguous GQA groups, causal mask aligned to the bottom right when Nq < Nk."""
    assert q.shape[-1] == k.shape[-1] == v.shape[-1], "flash-attn needs one head size"
    assert q.shape[0] == k.shape[0] and k.shape == v.shape and q.shape[2] % k.shape[2] == 0
    standin_flash_attn_func.calls += 1
    n_q, n_k = q.shape[1], k.shape[1]
    mask = torch.ones(n_q, n_k, dtype=torch.bool).tril(diagonal=n_k - n_q) if causal else None
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, enable_gqa=True
    )
    return out.transpose(1, 2)


standin_flash_attn_func.calls = 0


@pytest.mark.parametrize("variant", [dict(attention="baseline"), dict(attention="diff_v1"), {}])
def test_flash_path_with_standin_equals_sdpa_path(monkeypatch, variant):
    monkeypatch.setattr(kernel, "flash_attn_func", standin_flash_attn_func)
    torch.manual_seed(0)
    sdpa = Transformer(dataclasses.replace(CFG, attn_impl="sdpa", **variant))
    flash = Transformer(dataclasses.replace(CFG, attn_impl="flash", **variant))
    flash.load_state_dict(sdpa.state_dict())
    x = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    calls = standin_flash_attn_func.calls
    torch.testing.assert_close(flash(x), sdpa(x), rtol=1e-5, atol=1e-5)
    assert standin_flash_attn_func.calls > calls  # the flash path really ran
    # decoding: a prefill, then single tokens against the cache (Nq = 1 < Nk)
    caches = flash.new_kv_caches(2, 12)
    steps = [flash(x[:, :6], caches)] + [flash(x[:, i : i + 1], caches) for i in range(6, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), sdpa(x), rtol=1e-5, atol=1e-5)


def test_flash_without_the_package_names_the_setting(monkeypatch):
    monkeypatch.setattr(kernel, "flash_attn_func", None)
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(RuntimeError, match="attn_impl='flash'"):
        kernel.attention(q, q, q, "flash")
    assert kernel.resolve_impl("auto", q) == "sdpa"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("variant", [dict(attention="baseline"), dict(attention="diff_v1"), {}])
def test_real_flash_attn_equals_sdpa_on_gpu(variant):
    pytest.importorskip("flash_attn")
    cfg = dataclasses.replace(CFG, n_heads=8, n_kv_heads=2, head_dim=64, d_model=256, **variant)
    torch.manual_seed(0)
    with torch.device("cuda"):
        sdpa = Transformer(dataclasses.replace(cfg, attn_impl="sdpa")).bfloat16()
        flash = Transformer(dataclasses.replace(cfg, attn_impl="flash")).bfloat16()
    flash.load_state_dict(sdpa.state_dict())
    x = torch.randint(0, 64, (2, 32), device="cuda")
    torch.testing.assert_close(flash(x).float(), sdpa(x).float(), rtol=2e-2, atol=2e-2)
