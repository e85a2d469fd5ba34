"""The model's one config: a documented dataclass, validated before any module is built."""

from __future__ import annotations

from dataclasses import dataclass

ATTENTION_VARIANTS = ("baseline", "diff_v1", "diff_v2")
PAIRINGS = ("grouped", "cross_group")
LAMBDA_MODES = ("sigmoid", "none", "linear")
ATTN_IMPLS = ("auto", "sdpa", "flash")


@dataclass
class ModelConfig:
    name: str = "tiny"
    """Preset name, for run names and reports only."""
    vocab_size: int = 8192
    """Rows of the token embedding (and LM head); at least the tokenizer's vocabulary."""
    d_model: int = 256
    """Residual stream width D."""
    n_layers: int = 4
    """Number of transformer blocks."""
    n_heads: int = 4
    """h: output heads. DIFF V2 runs 2h query heads and subtracts pairs back to h."""
    n_kv_heads: int = 2
    """h_kv: key/value heads (GQA). Must divide n_heads."""
    head_dim: int = 64
    """d: per-head width. Must be even (rotary pairs)."""
    ffn_hidden: int = 688
    """SwiGLU hidden width."""
    max_seq_len: int = 256
    """Longest sequence the rotary table and KV cache are built for, in tokens."""
    rope_theta: float = 10000.0
    """Rotary base."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    tie_embeddings: bool = False
    """Share the token embedding with the LM head."""
    attention: str = "diff_v2"
    """Attention variant: baseline | diff_v1 | diff_v2."""
    pairing: str = "grouped"
    """DIFF V2 head pairing: grouped (adjacent heads 2j, 2j+1 share a GQA group) | cross_group (blog ablation 1)."""
    lambda_mode: str = "sigmoid"
    """DIFF V2 lambda: sigmoid (spec) | none (attn1 - attn2, ablation 2) | linear (no sigmoid, ablation 3)."""
    attn_impl: str = "auto"
    """Attention kernel: auto (flash-attn on CUDA when installed, else SDPA) | sdpa | flash."""
    init_std: float = 0.02
    """Std of the normal init of weights; residual output projections are scaled by 1/sqrt(2 * n_layers)."""
