"""The Transformer baseline: `model.attention=baseline`, round(baseline_head_factor * h) softmax heads.

The module is DIFF V2's with `use_diff_v2=False` (the reference's own baseline switch): same plumbing, no
pairs, no lambda.
"""

from __future__ import annotations

from .attention_diff_v2 import Attention
from .config import ModelConfig, baseline_heads


class Baseline:
    """h' = round(baseline_head_factor * h) query and output heads of head_dim over the h_kv kv heads."""

    name = "baseline"

    def build(self, cfg: ModelConfig, layer_idx: int) -> Attention:
        heads = baseline_heads(cfg)
        return Attention(
            cfg.d_model, heads, cfg.n_kv_heads, cfg.head_dim, use_diff_v2=False, attn_impl=cfg.attn_impl
        )

    def projection_macs(self, cfg: ModelConfig) -> int:
        d_model, d, heads = cfg.d_model, cfg.head_dim, baseline_heads(cfg)
        return d_model * heads * d + 2 * d_model * cfg.n_kv_heads * d + heads * d * d_model

    def kernel_flops(self, cfg: ModelConfig, seq_len: int) -> float:
        d = cfg.head_dim
        return 2.0 * baseline_heads(cfg) * seq_len * (d + d)


VARIANT = Baseline()
