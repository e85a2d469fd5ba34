"""Training FLOPs per token, for MFU: each attention variant and feed-forward declares its own share.

Only matrix multiplies are counted (as torch.utils.flop_counter and the PaLM MFU convention do): they are
>99% of the work, and elementwise ops (norms, softmax, RoPE, SiLU, DIFF V2's `a1 - lambda * a2`) are memory
bound, so counting them would inflate MFU without measuring the tensor cores. The embedding lookup is a
gather, not a matmul, and is not counted; the LM head is.
"""

from __future__ import annotations

from .config import ModelConfig
from .feed_forward import feed_forward_kind
from .variants import attention_variant


def attention_projection_macs(cfg: ModelConfig) -> int:
    """Multiply-accumulates per token in one layer's attention projections (= their weight count)."""
    return attention_variant(cfg).projection_macs(cfg)


def attention_kernel_flops(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs per token of the softmax-attention matmuls (q.k scores and the weighted sum of values).

    Each query head does 2 * seq_len * d_qk for the scores and 2 * seq_len * d_v for the values. Every key
    position is counted, not only the causal half actually needed, as PaLM's MFU and torch's FLOP counter do
    (flash kernels skip the masked half, so this overstates the attention work by up to 2x; it keeps our
    MFU comparable with the literature). Each variant declares its own (model/variants.py).
    """
    return attention_variant(cfg).kernel_flops(cfg, seq_len)


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs per token: 2 per multiply-accumulate of every weight matmul, plus attention matmuls."""
    per_layer = 2.0 * attention_projection_macs(cfg) + attention_kernel_flops(cfg, seq_len)
    kind = feed_forward_kind(cfg)  # an MoE counts its active experts only, and its dense first blocks
    ffn = sum(2.0 * kind.macs(cfg, i) for i in range(cfg.n_layers))
    lm_head = 2.0 * cfg.d_model * cfg.vocab_size  # counted whether tied or not: the matmul runs either way
    return cfg.n_layers * per_layer + ffn + lm_head


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: forward + backward = 3x forward (backward computes the gradients with
    respect to both the inputs and the weights of every matmul: two matmuls of the forward's size)."""
    return 3.0 * forward_flops_per_token(cfg, seq_len)
