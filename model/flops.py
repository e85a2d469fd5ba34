"""Training FLOPs per token, per attention variant, for MFU.

Only matrix multiplies are counted (as torch.utils.flop_counter and the PaLM MFU convention do): they are
>99% of the work, and elementwise ops (norms, softmax, RoPE, SiLU, DIFF V2's `a1 - lambda * a2`) are memory
bound, so counting them would inflate MFU without measuring the tensor cores. The embedding lookup is a
gather, not a matmul, and is not counted; the LM head is.

A mixture-of-experts block counts what one token runs: the router and its top-k routed experts (plus any
shared experts), not the experts it is not sent to, so MFU measures the active parameters' work. The
dispatch itself (sort, gather, scatter) moves memory and is not counted.
"""

from __future__ import annotations

from model.config import ModelConfig, baseline_heads, is_moe_layer, moe_hidden


def attention_projection_macs(cfg: ModelConfig) -> int:
    """Multiply-accumulates per token in one layer's attention projections (= their weight count)."""
    d_model, d, h, h_kv = cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    kv = 2 * d_model * h_kv * d  # K and V: the same h_kv heads in every variant
    if cfg.attention == "baseline":
        heads = baseline_heads(cfg)
        return d_model * heads * d + kv + heads * d * d_model
    if cfg.attention == "diff_v1":  # h sub-heads of d for Q, h/2 heads of 2d into O: the baseline's sizes
        return d_model * h * d + kv + h * d * d_model
    lam = 0 if cfg.lambda_mode == "none" else d_model * h  # lambda_proj D -> h
    return d_model * 2 * h * d + kv + h * d * d_model + lam  # Q has 2h heads; O reads h


def attention_kernel_flops(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs per token of the softmax-attention matmuls (q.k scores and the weighted sum of values).

    Each query head does 2 * seq_len * d_qk for the scores and 2 * seq_len * d_v for the values. Every key
    position is counted, not only the causal half actually needed, as PaLM's MFU and torch's FLOP counter do
    (flash kernels skip the masked half, so this overstates the attention work by up to 2x; it keeps our
    MFU comparable with the literature).
    """
    d, h = cfg.head_dim, cfg.n_heads
    if cfg.attention == "baseline":
        return 2.0 * baseline_heads(cfg) * seq_len * (d + d)
    if cfg.attention == "diff_v1":
        # Four kernel calls of h/2 heads (two maps x the two d-wide halves of the 2d values), as the
        # reference's flash formulation: each map's scores are computed twice, and the hardware does it.
        return 4 * 2.0 * (h // 2) * seq_len * (d + d)
    return 2.0 * (2 * h) * seq_len * (d + d)  # one call over 2h query heads: twice the baseline's h heads


def feed_forward_macs(cfg: ModelConfig, layer_idx: int) -> int:
    """Multiply-accumulates per token in block `layer_idx`'s feed-forward: a SwiGLU of hidden F costs
    3 * D * F (w1, w3: D -> F; w2: F -> D); an MoE runs its router (D -> E) and top_k + shared experts of
    hidden H."""
    if not is_moe_layer(cfg, layer_idx):
        return 3 * cfg.d_model * cfg.ffn_hidden
    experts_run = cfg.moe_top_k + cfg.moe_shared_experts
    return cfg.d_model * cfg.moe_experts + experts_run * 3 * cfg.d_model * moe_hidden(cfg)


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs per token: 2 per multiply-accumulate of every weight matmul, plus attention matmuls."""
    per_layer = 2.0 * attention_projection_macs(cfg) + attention_kernel_flops(cfg, seq_len)
    ffn = sum(2.0 * feed_forward_macs(cfg, i) for i in range(cfg.n_layers))
    lm_head = 2.0 * cfg.d_model * cfg.vocab_size  # counted whether tied or not: the matmul runs either way
    return cfg.n_layers * per_layer + ffn + lm_head


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: forward + backward = 3x forward (backward computes the gradients with
    respect to both the inputs and the weights of every matmul: two matmuls of the forward's size)."""
    return 3.0 * forward_flops_per_token(cfg, seq_len)
