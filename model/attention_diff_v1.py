"""DIFF V1 attention: `model.attention=diff_v1`, h/2 differential heads over the baseline's projections."""

from __future__ import annotations

import math

import torch
from torch import nn

from .attention import AttentionBase, Rope
from .config import ModelConfig
from .documents import Documents
from .kv_cache import KVCache


def lambda_init_for_layer(layer_idx: int) -> float:
    """DIFF V1's lambda_init by 0-based layer index: 0.8 - 0.6 * exp(-0.3 * l)."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer_idx)


class DiffV1Attention(AttentionBase):
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
        super().__init__(
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            n_heads * head_dim,
            value_dim=2 * head_dim,
            attn_impl=attn_impl,
        )
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.lambda_init = lambda_init_for_layer(layer_idx)
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
        """The lambdas and the sub-norm."""
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

    def forward(
        self, x: torch.Tensor, rel_pos: Rope, cache: KVCache | None = None, docs: Documents | None = None
    ) -> torch.Tensor:
        q, k, v = self.project(x, rel_pos)
        k, v = self.cached(k, v, cache)
        attn1 = self.kernel(q[:, :, 0::2], k[:, :, 0::2], v, docs)  # [B, N, h/2, 2d]
        attn2 = self.kernel(q[:, :, 1::2], k[:, :, 1::2], v, docs)
        attn = attn1 - self.lambda_full().to(attn1.dtype) * attn2
        return self.output(self.subln(attn) * (1 - self.lambda_init))

    def rotated_qk(self, x: torch.Tensor, rel_pos: Rope) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated query sub-heads [B, N, h, d] and the key sub-head each reads [B, N, h, d] (diagnostics)."""
        q, k, _ = self.project(x, rel_pos)
        group = q.shape[2] // k.shape[2]
        k1 = k[:, :, 0::2].repeat_interleave(group, dim=2)
        k2 = k[:, :, 1::2].repeat_interleave(group, dim=2)
        return q, torch.stack((k1, k2), dim=3).flatten(2, 3)

    def head_output_module(self) -> nn.Module:
        # read before the per-head RMSNorm, which would pin the head's RMS near the norm's weight
        return self.subln

    def output_head_maps(self, n_maps: int) -> list[list[int]]:
        return [[2 * j, 2 * j + 1] for j in range(n_maps // 2)]  # sub-heads (2p, 2p+1)


class DiffV1:
    """The baseline's projection sizes (h sub-heads of d for Q, h/2 heads of 2d into O) plus four vectors."""

    name = "diff_v1"

    def build(self, cfg: ModelConfig, layer_idx: int) -> DiffV1Attention:
        return DiffV1Attention(
            cfg.d_model,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.head_dim,
            layer_idx,
            attn_impl=cfg.attn_impl,
            norm_eps=cfg.norm_eps,
        )

    def projection_macs(self, cfg: ModelConfig) -> int:
        d_model, d, h = cfg.d_model, cfg.head_dim, cfg.n_heads
        return d_model * h * d + 2 * d_model * cfg.n_kv_heads * d + h * d * d_model

    def kernel_flops(self, cfg: ModelConfig, seq_len: int) -> float:
        # Four kernel calls of h/2 heads (two maps x the two d-wide halves of the 2d values), as the
        # reference's flash formulation: each map's scores are computed twice, and the hardware does it.
        d = cfg.head_dim
        return 4 * 2.0 * (cfg.n_heads // 2) * seq_len * (d + d)


VARIANT = DiffV1()
