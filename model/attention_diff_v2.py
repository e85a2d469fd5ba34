"""DIFF V2 attention (and the baseline it reduces to): `model.attention=diff_v2`.

`Attention` follows the DIFF V2 reference module (microsoft/unilm, multihead_flashdiffv2.py): the same
parameter names and shapes (q_proj, k_proj, v_proj, o_proj, lambda_proj; no biases), the same head order and
interleaved RoPE, so a state dict of the reference module loads here and gives the same output.
`use_diff_v2=False` is the reference's baseline: h query heads, no lambda (model/attention_baseline.py).
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import AttentionBase, Rope
from .config import ModelConfig
from .documents import Documents
from .kv_cache import KVCache


class Attention(AttentionBase):
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
        n_q_heads = 2 * n_heads if use_diff_v2 else n_heads
        super().__init__(d_model, n_q_heads, n_kv_heads, head_dim, n_heads * head_dim, attn_impl=attn_impl)
        self.use_diff_v2 = use_diff_v2
        self.n_heads, self.n_kv_heads, self.n_q_heads = n_heads, n_kv_heads, n_q_heads
        self.pairing = pairing
        self.lambda_mode = lambda_mode
        has_lambda = use_diff_v2 and lambda_mode != "none"
        self.lambda_proj = nn.Linear(d_model, n_heads, bias=False) if has_lambda else None
        self.n_out_heads, self.out_head_dim = n_heads, head_dim

    def reset_variant_parameters(self) -> None:
        """DIFF V2's lambda_proj keeps PyTorch's default Linear init, as the reference."""
        if self.lambda_proj is not None:
            self.lambda_proj.reset_parameters()

    def lambda_values(self, x: torch.Tensor) -> torch.Tensor | None:
        """The lambda each output head subtracts with, [B, N, h]; None when there is none (baseline, none)."""
        if self.lambda_proj is None:
            return None
        lam = self.lambda_proj(x)
        return torch.sigmoid(lam) if self.lambda_mode == "sigmoid" else lam

    def forward(
        self, x: torch.Tensor, rel_pos: Rope, cache: KVCache | None = None, docs: Documents | None = None
    ) -> torch.Tensor:
        q, k, v = self.project(x, rel_pos)
        k, v = self.cached(k, v, cache)
        # one kernel call over all 2h heads: both heads of a pair see the same document mask
        attn = self.kernel(q, k, v, docs)  # [B, N, Hq, d]
        if self.use_diff_v2:
            # unbind, not strided slices: its backward stacks the two gradients instead of zero-filling twice
            if self.pairing == "grouped":  # heads (2j, 2j+1)
                attn1, attn2 = attn.unflatten(2, (-1, 2)).unbind(3)
            else:  # heads (j, h + j)
                attn1, attn2 = attn.unflatten(2, (2, -1)).unbind(2)
            lam = self.lambda_values(x)
            attn = attn1 - attn2 if lam is None else attn1 - lam.unsqueeze(-1) * attn2
        return self.output(attn)

    def rotated_qk(self, x: torch.Tensor, rel_pos: Rope) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated queries [B, N, Hq, d] and the keys each query head reads [B, N, Hq, d] (diagnostics)."""
        q, k, _ = self.project(x, rel_pos)
        return q, k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)

    def output_head_maps(self, n_maps: int) -> list[list[int]]:
        n_out = n_maps // 2 if self.use_diff_v2 else n_maps
        if not self.use_diff_v2:  # baseline: one map per head
            return [[j] for j in range(n_out)]
        if self.pairing == "cross_group":  # ablation 1: heads j and h + j
            return [[j, n_out + j] for j in range(n_out)]
        return [[2 * j, 2 * j + 1] for j in range(n_out)]


class DiffV2:
    """`model.attention=diff_v2`: 2h query heads, h output heads, lambda_proj D -> h (unless lambda none)."""

    name = "diff_v2"

    def build(self, cfg: ModelConfig, layer_idx: int) -> Attention:
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

    def projection_macs(self, cfg: ModelConfig) -> int:
        d_model, d, h = cfg.d_model, cfg.head_dim, cfg.n_heads
        lam = 0 if cfg.lambda_mode == "none" else d_model * h  # lambda_proj D -> h
        kv = 2 * d_model * cfg.n_kv_heads * d
        return d_model * 2 * h * d + kv + h * d * d_model + lam  # Q has 2h heads; O reads h

    def kernel_flops(self, cfg: ModelConfig, seq_len: int) -> float:
        d = cfg.head_dim
        return (
            2.0 * (2 * cfg.n_heads) * seq_len * (d + d)
        )  # one call over 2h query heads: twice the baseline's


VARIANT = DiffV2()
