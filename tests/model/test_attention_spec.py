"""DIFF V2 / V1 attention against explicit float64 computations of the spec and of the reference module."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from model.attention import Attention, DiffV1Attention
from model.config import ModelConfig
from model.rope import rope_tables
from model.transformer import Transformer

THETA = 10000.0


def rope_complex(x: torch.Tensor) -> torch.Tensor:
    """Interleaved RoPE written as complex rotation: channels (2i, 2i+1) are one complex number."""
    b, n, h, d = x.shape
    z = torch.view_as_complex(x.reshape(b, n, h, d // 2, 2).contiguous())
    freqs = THETA ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = torch.arange(n, dtype=torch.float64)[:, None] * freqs[None, :]
    z = z * torch.polar(torch.ones_like(angles), angles)[None, :, None, :]
    return torch.view_as_real(z).reshape(b, n, h, d)


def causal_softmax(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Softmax map [B, N, N] of one query head [B, N, d] over one key head [B, N, d], causal, 1/sqrt(d)."""
    n, d = q.shape[1], q.shape[-1]
    scores = q @ k.transpose(1, 2) / math.sqrt(d)
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


def projected(attn: nn.Module, x: torch.Tensor, kv_width: int | None = None):
    """q, k (rotated by rope_complex) and v [B, N, heads, width] from the module's own weights."""
    b, n, _ = x.shape
    d = attn.head_dim
    q = rope_complex((x @ attn.q_proj.weight.T).view(b, n, -1, d))
    k = rope_complex((x @ attn.k_proj.weight.T).view(b, n, -1, d))
    v = (x @ attn.v_proj.weight.T).view(b, n, -1, kv_width or d)
    return q, k, v


def make_v2(n_heads=4, n_kv_heads=2, head_dim=8, d_model=32, **kw) -> Attention:
    torch.manual_seed(0)
    return Attention(d_model, n_heads, n_kv_heads, head_dim, use_diff_v2=True, **kw).double()


def run(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return attn(x, rope_tables(attn.head_dim, x.shape[1], THETA, dtype=x.dtype))


def x_input(n: int = 10, d_model: int = 32) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, n, d_model, dtype=torch.float64)


@pytest.mark.parametrize("n_heads,n_kv_heads", [(4, 2), (4, 4), (4, 1)])
def test_diff_v2_equals_explicit_float64_spec(n_heads, n_kv_heads):
    attn, x = make_v2(n_heads, n_kv_heads), x_input()
    q, k, v = projected(attn, x)
    lam = torch.sigmoid(x @ attn.lambda_proj.weight.T)  # [B, N, h]
    group = 2 * n_heads // n_kv_heads
    heads = []
    for j in range(n_heads):
        kv = (2 * j) // group
        assert (2 * j + 1) // group == kv  # the spec's promise: a pair sits in one GQA group
        a1 = causal_softmax(q[:, :, 2 * j], k[:, :, kv])
        a2 = causal_softmax(q[:, :, 2 * j + 1], k[:, :, kv])
        heads.append(a1 @ v[:, :, kv] - lam[:, :, j, None] * (a2 @ v[:, :, kv]))
    expected = torch.cat(heads, dim=-1) @ attn.o_proj.weight.T
    torch.testing.assert_close(run(attn, x), expected, rtol=0, atol=1e-12)


class ReferenceFlashDiffV2(nn.Module):
    """Explicit re-statement of microsoft/unilm's MultiheadFlashDiffV2 forward: flash-attn's interleaved
    rotary (rotate_half form) and flash_attn_func's contiguous-GQA causal attention, written out."""

    def __init__(self, use_diff_v2: bool, d_model: int, num_heads: int, num_kv_heads: int, head_dim: int):
        super().__init__()
        self.use_diff_v2, self.num_heads, self.num_kv_heads, self.head_dim = (
            use_diff_v2,
            num_heads,
            num_kv_heads,
            head_dim,
        )
        self.num_q_heads = 2 * num_heads if use_diff_v2 else num_heads
        self.q_proj = nn.Linear(d_model, self.num_q_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, d_model, bias=False)
        self.lambda_proj = nn.Linear(d_model, num_heads, bias=False) if use_diff_v2 else None

    @staticmethod
    def rotary(x, cos, sin):
        x1, x2 = x[..., ::2], x[..., 1::2]
        rotated = torch.stack((-x2, x1), dim=-1).flatten(-2)
        cos = cos.repeat_interleave(2, dim=-1)[:, None, :]
        sin = sin.repeat_interleave(2, dim=-1)[:, None, :]
        return x * cos + rotated * sin

    @staticmethod
    def flash_attn_func(q, k, v):
        rep = q.shape[2] // k.shape[2]
        k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
        n = q.shape[1]
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
        return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, dim=-1), v)

    def forward(self, x, rel_pos):
        bsz, n, _ = x.shape
        q = self.q_proj(x).view(bsz, n, self.num_q_heads, self.head_dim)
        k = self.k_proj(x).view(bsz, n, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(bsz, n, self.num_kv_heads, self.head_dim)
        q, k = self.rotary(q, *rel_pos), self.rotary(k, *rel_pos)
        attn = self.flash_attn_func(q, k, v)
        if self.use_diff_v2:
            attn = attn[:, :, 0::2] - torch.sigmoid(self.lambda_proj(x)).unsqueeze(-1) * attn[:, :, 1::2]
        return self.o_proj(attn.reshape(bsz, n, self.num_heads * self.head_dim))


@pytest.mark.parametrize("use_diff_v2", [True, False])
def test_reference_state_dict_loads_and_gives_the_same_output(use_diff_v2):
    torch.manual_seed(2)
    ref = ReferenceFlashDiffV2(use_diff_v2, 32, 4, 2, 8).double()
    ours = Attention(32, 4, 2, 8, use_diff_v2=use_diff_v2).double()
    ours.load_state_dict(ref.state_dict(), strict=True)  # same names and shapes, nothing extra
    x = x_input()
    inv_freq = 1.0 / (THETA ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8))
    freqs = torch.outer(torch.arange(10, dtype=torch.float64), inv_freq)
    torch.testing.assert_close(ours(x, (freqs.cos(), freqs.sin())), ref(x, (freqs.cos(), freqs.sin())))


def heads_moved_by_kv_head(attn: Attention, x: torch.Tensor, kv_head: int) -> set[int]:
    """Output heads (o_proj input) that change when the values of one kv head change."""
    seen = []
    handle = attn.o_proj.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    run(attn, x)
    d = attn.head_dim
    with torch.no_grad():
        attn.v_proj.weight[kv_head * d : (kv_head + 1) * d] += 1.0
    run(attn, x)
    handle.remove()
    before, after = (t.unflatten(-1, (attn.n_heads, d)) for t in seen)
    return {j for j in range(attn.n_heads) if not torch.allclose(before[..., j, :], after[..., j, :])}


@pytest.mark.parametrize("n_kv_heads", [2, 4])
def test_grouped_pairs_read_exactly_one_kv_head(n_kv_heads):
    attn, x = make_v2(4, n_kv_heads), x_input()
    owners = {}
    for g in range(n_kv_heads):
        for j in heads_moved_by_kv_head(attn, x, g):
            owners.setdefault(j, []).append(g)
    group = 8 // n_kv_heads
    assert owners == {j: [(2 * j) // group] for j in range(4)}


@pytest.mark.parametrize("n_kv_heads", [2, 4])
def test_cross_group_pairs_read_two_kv_heads(n_kv_heads):
    attn, x = make_v2(4, n_kv_heads, pairing="cross_group"), x_input()
    owners = {}
    for g in range(n_kv_heads):
        for j in heads_moved_by_kv_head(attn, x, g):
            owners.setdefault(j, []).append(g)
    group = 8 // n_kv_heads  # head j pairs query heads j and h + j
    assert owners == {j: sorted({j // group, (4 + j) // group}) for j in range(4)}
    assert all(len(kv) == 2 for kv in owners.values())


def test_lambda_none_equals_attn1_minus_attn2():
    attn, x = make_v2(lambda_mode="none"), x_input()
    assert attn.lambda_proj is None
    q, k, v = projected(attn, x)
    heads = [
        causal_softmax(q[:, :, 2 * j], k[:, :, j // 2]) @ v[:, :, j // 2]
        - causal_softmax(q[:, :, 2 * j + 1], k[:, :, j // 2]) @ v[:, :, j // 2]
        for j in range(4)
    ]
    torch.testing.assert_close(run(attn, x), torch.cat(heads, -1) @ attn.o_proj.weight.T, rtol=0, atol=1e-12)


def test_linear_lambda_scales_by_the_raw_projection():
    attn, x = make_v2(lambda_mode="linear"), x_input()
    with torch.no_grad():
        attn.lambda_proj.weight.mul_(20)  # far outside sigmoid's (0, 1)
    lam = x @ attn.lambda_proj.weight.T
    assert lam.abs().max() > 1
    q, k, v = projected(attn, x)
    heads = [
        causal_softmax(q[:, :, 2 * j], k[:, :, j // 2]) @ v[:, :, j // 2]
        - lam[:, :, j, None] * (causal_softmax(q[:, :, 2 * j + 1], k[:, :, j // 2]) @ v[:, :, j // 2])
        for j in range(4)
    ]
    torch.testing.assert_close(run(attn, x), torch.cat(heads, -1) @ attn.o_proj.weight.T, rtol=0, atol=1e-10)


def test_sigmoid_lambda_near_zero_leaves_the_even_heads_alone():
    attn, x = make_v2(), x_input()
    x[..., 0] = 5.0 + x[..., 0].abs()  # a feature that is always >= 5 ...
    with torch.no_grad():
        attn.lambda_proj.weight.zero_()
        attn.lambda_proj.weight[:, 0] = -20.0  # ... drives every lambda logit below -100: sigmoid ~ 0
    baseline = Attention(32, 4, 2, 8, use_diff_v2=False).double()
    with torch.no_grad():
        even_rows = attn.q_proj.weight.view(8, 8, 32)[0::2].reshape(32, 32)
        baseline.q_proj.weight.copy_(even_rows)
        for name in ("k_proj", "v_proj", "o_proj"):
            getattr(baseline, name).weight.copy_(getattr(attn, name).weight)
    torch.testing.assert_close(run(attn, x), run(baseline, x), rtol=0, atol=1e-12)


def v1_model(n_layers: int = 3) -> Transformer:
    cfg = ModelConfig(
        vocab_size=64,
        d_model=32,
        n_layers=n_layers,
        n_heads=4,
        n_kv_heads=2,
        head_dim=8,
        ffn_hidden=64,
        max_seq_len=16,
        attention="diff_v1",
    )
    torch.manual_seed(3)
    model = Transformer(cfg).double()
    with torch.no_grad():
        for layer in model.layers:
            layer.attention.subln.weight.uniform_(0.5, 1.5)  # a learnable weight, not ones
    return model


def test_diff_v1_equals_explicit_formula_with_per_layer_lambda_init():
    model, x = v1_model(), x_input()
    expected_init = [0.2, 0.8 - 0.6 * math.exp(-0.3), 0.8 - 0.6 * math.exp(-0.6)]
    for layer_idx, layer in enumerate(model.layers):
        attn: DiffV1Attention = layer.attention
        lambda_init = expected_init[layer_idx]
        assert attn.lambda_init == pytest.approx(lambda_init)
        q, k, v = projected(attn, x, kv_width=16)  # q: 4 sub-heads, k: 2 sub-heads, v: 1 value of 2d
        lam = (
            torch.exp(torch.dot(attn.lambda_q1, attn.lambda_k1))
            - torch.exp(torch.dot(attn.lambda_q2, attn.lambda_k2))
            + lambda_init
        )
        heads = []
        for p in range(2):  # h/2 differential heads; both read kv differential head p // 2 = 0
            g = p // 2
            a1 = causal_softmax(q[:, :, 2 * p], k[:, :, 2 * g])
            a2 = causal_softmax(q[:, :, 2 * p + 1], k[:, :, 2 * g + 1])
            o = a1 @ v[:, :, g] - lam * (a2 @ v[:, :, g])
            o = o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * attn.subln.weight
            heads.append(o * (1 - lambda_init))
        expected = torch.cat(heads, -1) @ attn.o_proj.weight.T
        torch.testing.assert_close(run(attn, x), expected, rtol=0, atol=1e-12)
