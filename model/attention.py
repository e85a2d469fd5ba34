"""Attention modules: DIFF V2 (and the baseline it reduces to), and DIFF V1.

`Attention` follows the DIFF V2 reference module (microsoft/unilm, multihead_flashdiffv2.py): the same
parameter names and shapes (q_proj, k_proj, v_proj, o_proj, lambda_proj; no biases), the same head order and
interleaved RoPE, so a state dict of the reference module loads here and gives the same output.
`use_diff_v2=False` is the reference's baseline: h query heads, no lambda.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from model.config import ModelConfig, baseline_heads
from model.documents import Documents
from model.kernel import attention
from model.kv_cache import KVCache
from model.rope import apply_rope

Rope = tuple[torch.Tensor, torch.Tensor]


def lambda_init_for_layer(layer_idx: int) -> float:
    """DIFF V1's lambda_init by 0-based layer index: 0.8 - 0.6 * exp(-0.3 * l)."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer_idx)


class Attention(nn.Module):
    """DIFF V2 attention over 2h query heads (one causal GQA kernel call), or the baseline with h heads.

    Output heads j = 0..h-1 are A_{2j} V - lambda_j A_{2j+1} V with lambda = sigmoid(x W_lambda) per token
    and head (`pairing="grouped"`). Query heads 2j and 2j+1 fall in one GQA group because groups are
    contiguous and hold an even number (2h / h_kv) of heads: the pair reads one kv head.
    `pairing="cross_group"` pairs heads j and h + j (the first and second half), from different groups.
    `lambda_mode`: sigmoid (spec) | none (lambda = 1, no lambda_proj) | linear (x W_lambda, no sigmoid).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        use_diff_v2: bool,
        pairing: str = "grouped",
        lambda_mode: str = "sigmoid",
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.use_diff_v2 = use_diff_v2
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.pairing = pairing
        self.lambda_mode = lambda_mode
        self.attn_impl = attn_impl
        self.n_q_heads = 2 * n_heads if use_diff_v2 else n_heads
        self.q_proj = nn.Linear(d_model, self.n_q_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=False)
        has_lambda = use_diff_v2 and lambda_mode != "none"
        self.lambda_proj = nn.Linear(d_model, n_heads, bias=False) if has_lambda else None
        # what the diagnostics read: heads and width of o_proj's input
        self.n_out_heads, self.out_head_dim = n_heads, head_dim

    def reset_variant_parameters(self) -> None:
        """The parameters beyond q/k/v/o (which Transformer.init_weights draws): DIFF V2's lambda_proj keeps
        PyTorch's default Linear init, as the reference."""
        if self.lambda_proj is not None:
            self.lambda_proj.reset_parameters()

    def _qkv(self, x: torch.Tensor, rope: Rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        q = apply_rope(self.q_proj(x).view(b, n, self.n_q_heads, self.head_dim), *rope)
        k = apply_rope(self.k_proj(x).view(b, n, self.n_kv_heads, self.head_dim), *rope)
        v = self.v_proj(x).view(b, n, self.n_kv_heads, self.head_dim)
        return q, k, v

    def lambda_values(self, x: torch.Tensor) -> torch.Tensor | None:
        """The lambda each output head subtracts with, [B, N, h]; None when there is none (baseline, none)."""
        if self.lambda_proj is None:
            return None
        lam = self.lambda_proj(x)
        return torch.sigmoid(lam) if self.lambda_mode == "sigmoid" else lam

    def forward(
        self, x: torch.Tensor, rel_pos: Rope, cache: KVCache | None = None, docs: Documents | None = None
    ) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self._qkv(x, rel_pos)
        if cache is not None:
            k, v = cache.update(k, v)
        # one kernel call over all 2h heads: both heads of a pair see the same document mask
        attn = attention(q, k, v, self.attn_impl, docs)  # [B, N, Hq, d]
        if self.use_diff_v2:
            # unbind, not strided slices: its backward stacks the two gradients instead of zero-filling twice
            if self.pairing == "grouped":  # heads (2j, 2j+1)
                attn1, attn2 = attn.unflatten(2, (self.n_heads, 2)).unbind(3)
            else:  # heads (j, h + j)
                attn1, attn2 = attn.unflatten(2, (2, self.n_heads)).unbind(2)
            lam = self.lambda_values(x)
            attn = attn1 - attn2 if lam is None else attn1 - lam.unsqueeze(-1) * attn2
        return self.o_proj(attn.reshape(b, n, self.n_heads * self.head_dim))

    def rotated_qk(self, x: torch.Tensor, rel_pos: Rope) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated queries [B, N, Hq, d] and the keys each query head reads [B, N, Hq, d] (diagnostics)."""
        q, k, _ = self._qkv(x, rel_pos)
        return q, k.repeat_interleave(self.n_q_heads // self.n_kv_heads, dim=2)

    def kv_cache(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        shape = (self.n_kv_heads, self.head_dim)
        return KVCache(batch, max_len, shape, shape, device, dtype)


class DiffV1Attention(nn.Module):
    """DIFF V1 (flash-style formulation) with h/2 differential heads over the baseline's projection sizes.

    q_proj gives h sub-heads of d (pairs 2p, 2p+1 interleaved), k_proj h_kv sub-heads of d, v_proj h_kv/2
    values of 2d. Head p: RMSNorm_2d(A1 V - lambda A2 V) * (1 - lambda_init), with A1 from sub-heads
    (q_2p, k_2g), A2 from (q_2p+1, k_2g+1) and lambda = exp(lq1.lk1) - exp(lq2.lk2) + lambda_init.
    Values of width 2d: the kernel attends to their two d-wide halves separately, as the reference.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        layer_idx: int,
        attn_impl: str = "auto",
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.attn_impl = attn_impl
        self.lambda_init = lambda_init_for_layer(layer_idx)
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=False)
        self.lambda_q1 = nn.Parameter(torch.empty(head_dim))
        self.lambda_k1 = nn.Parameter(torch.empty(head_dim))
        self.lambda_q2 = nn.Parameter(torch.empty(head_dim))
        self.lambda_k2 = nn.Parameter(torch.empty(head_dim))
        self.subln = nn.RMSNorm(2 * head_dim, eps=norm_eps)
        self.n_out_heads, self.out_head_dim = n_heads // 2, 2 * head_dim

    def reset_lambda(self) -> None:
        """The four lambda vectors ~ N(0, 0.1), as V1."""
        for p in (self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2):
            nn.init.normal_(p, mean=0.0, std=0.1)

    def reset_variant_parameters(self) -> None:
        """The parameters beyond q/k/v/o (which Transformer.init_weights draws): lambdas and the sub-norm."""
        self.reset_lambda()
        self.subln.reset_parameters()

    def lambda_full(self) -> torch.Tensor:
        """The layer's scalar lambda (computed in at least float32: exp amplifies bf16 rounding)."""
        dtype = torch.promote_types(self.lambda_q1.dtype, torch.float32)
        lam1 = torch.exp(torch.sum(self.lambda_q1.to(dtype) * self.lambda_k1.to(dtype)))
        lam2 = torch.exp(torch.sum(self.lambda_q2.to(dtype) * self.lambda_k2.to(dtype)))
        return lam1 - lam2 + self.lambda_init

    def lambda_values(self, x: torch.Tensor) -> torch.Tensor:
        return self.lambda_full().reshape(1)

    def _qkv(self, x: torch.Tensor, rope: Rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        q = apply_rope(self.q_proj(x).view(b, n, self.n_heads, self.head_dim), *rope)
        k = apply_rope(self.k_proj(x).view(b, n, self.n_kv_heads, self.head_dim), *rope)
        v = self.v_proj(x).view(b, n, self.n_kv_heads // 2, 2 * self.head_dim)
        return q, k, v

    def forward(
        self, x: torch.Tensor, rel_pos: Rope, cache: KVCache | None = None, docs: Documents | None = None
    ) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self._qkv(x, rel_pos)
        if cache is not None:
            k, v = cache.update(k, v)
        attn1 = attention(q[:, :, 0::2], k[:, :, 0::2], v, self.attn_impl, docs)  # [B, N, h/2, 2d]
        attn2 = attention(q[:, :, 1::2], k[:, :, 1::2], v, self.attn_impl, docs)
        attn = attn1 - self.lambda_full().to(attn1.dtype) * attn2
        attn = self.subln(attn) * (1 - self.lambda_init)
        return self.o_proj(attn.reshape(b, n, self.n_heads * self.head_dim))

    def rotated_qk(self, x: torch.Tensor, rel_pos: Rope) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated query sub-heads [B, N, h, d] and the key sub-head each reads [B, N, h, d] (diagnostics)."""
        q, k, _ = self._qkv(x, rel_pos)
        group = self.n_heads // self.n_kv_heads
        k1 = k[:, :, 0::2].repeat_interleave(group, dim=2)
        k2 = k[:, :, 1::2].repeat_interleave(group, dim=2)
        return q, torch.stack((k1, k2), dim=3).flatten(2, 3)

    def kv_cache(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        # h_kv key sub-heads of d and h_kv/2 values of 2d: the same memory as the baseline's h_kv heads
        k_shape, v_shape = (self.n_kv_heads, self.head_dim), (self.n_kv_heads // 2, 2 * self.head_dim)
        return KVCache(batch, max_len, k_shape, v_shape, device, dtype)


def build_attention(cfg: ModelConfig, layer_idx: int) -> nn.Module:
    """The attention module of block `layer_idx` for the configured variant."""
    if cfg.attention == "diff_v1":
        return DiffV1Attention(
            cfg.d_model,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.head_dim,
            layer_idx,
            attn_impl=cfg.attn_impl,
            norm_eps=cfg.norm_eps,
        )
    if cfg.attention == "diff_v2":
        return Attention(
            cfg.d_model,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.head_dim,
            use_diff_v2=True,
            pairing=cfg.pairing,
            lambda_mode=cfg.lambda_mode,
            attn_impl=cfg.attn_impl,
        )
    heads = baseline_heads(cfg)
    return Attention(
        cfg.d_model, heads, cfg.n_kv_heads, cfg.head_dim, use_diff_v2=False, attn_impl=cfg.attn_impl
    )
