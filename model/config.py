"""The model's one config: a documented dataclass, validated before any module is built."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum, StrEnum

from errors import ConfigError

# The choice fields' allowed values; OmegaConf refuses any other value, naming these.
Attention = StrEnum("Attention", ["baseline", "diff_v1", "diff_v2"])
Pairing = StrEnum("Pairing", ["grouped", "cross_group"])
LambdaMode = StrEnum("LambdaMode", ["sigmoid", "none", "linear"])
AttnImpl = StrEnum("AttnImpl", ["auto", "sdpa", "flash"])
MoEImpl = StrEnum("MoEImpl", ["auto", "grouped", "loop"])


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
    attention: Attention = Attention.diff_v2
    """Attention variant: baseline | diff_v1 | diff_v2."""
    pairing: Pairing = Pairing.grouped
    """DIFF V2 head pairing: grouped (adjacent heads 2j, 2j+1 share a GQA group) | cross_group (heads j and
    h + j, from different groups: blog ablation 1)."""
    lambda_mode: LambdaMode = LambdaMode.sigmoid
    """DIFF V2 lambda: sigmoid (spec) | none (attn1 - attn2, ablation 2) | linear (no sigmoid, ablation 3)."""
    attn_impl: AttnImpl = AttnImpl.auto
    """Attention kernel: auto (flash-attn on CUDA when installed, else SDPA) | sdpa | flash."""
    init_std: float = 0.02
    """Std of the normal init of weights; residual output projections are scaled by 1/sqrt(2 * n_layers)."""
    baseline_head_factor: float = 1.0
    """Baseline only: run round(factor * n_heads) heads of head_dim instead of n_heads, so one size preset
    gives the blog's comparison baselines: 1.5 (parameter-matched to DIFF V2, ablation 4) and 2.0 (equal
    query width, 2h heads). Must be 1.0 for the other variants."""
    variant: str = "diff_v2"
    """Attention preset name (the conf/attention file, e.g. baseline_2h, diff_v2_cross_group), for run names
    and reports only: `attention` alone does not tell the ablations apart."""
    doc_mask: bool = False
    """Document-aware attention: no token attends across an end-of-text token inside a training window (each
    document of a packed window is attended as if alone; model/documents.py). Off: plain causal over the
    whole window. KV-cached decoding (model.generate) keeps the documents too: an end-of-text token in the
    prompt or the output starts a new one."""
    doc_positions: bool = False
    """With doc_mask: RoPE positions restart at 0 at every document start instead of counting from the
    window start."""
    eot_token: int = -1
    """The end-of-text token id that ends each document (doc_mask); -1: training takes it from the dataset."""
    moe_experts: int = 0
    """E: routed SwiGLU experts in each mixture-of-experts feed-forward (model/moe.py); 0: every block's
    feed-forward is the dense SwiGLU of ffn_hidden."""
    moe_top_k: int = 2
    """Experts each token is routed to (token-choice top-k); at most moe_experts."""
    moe_hidden: int = 0
    """Each routed (and shared) expert's SwiGLU hidden width; 0: ffn_hidden."""
    moe_shared_experts: int = 0
    """Always-on experts every token also passes through (one SwiGLU of moe_shared_experts * moe_hidden)."""
    moe_first_dense: int = 0
    """The first k blocks keep the dense SwiGLU of ffn_hidden (DeepSeek-V3: 3); the rest are MoE."""
    moe_route_norm: bool = True
    """Rescale each token's top-k router probabilities to sum to 1 (Qwen3-MoE's norm_topk_prob); off: the
    softmax probabilities weight the experts as they are (Switch, Mixtral before its renormalisation)."""
    moe_bias_rate: float = 1e-3
    """Auxiliary-loss-free balancing (DeepSeek-V3): after every optimizer step each expert's routing bias
    moves by this much towards balance (up if it got fewer tokens than the mean, down if more); the bias
    chooses experts but never weights them. 0: off. The default balancer: it adds no gradient that competes
    with the language-modelling loss (DeepSeek-V3 reports better quality than an auxiliary loss at equal
    balance)."""
    moe_aux_coef: float = 0.0
    """Weight of the Switch load-balancing loss E * sum_e f_e * P_e (f_e: share of routed slots, P_e: mean
    router probability of expert e; 1.0 when balanced), added to the training loss per MoE layer. 0: off."""
    moe_z_coef: float = 0.0
    """Weight of the router z-loss mean(logsumexp(router logits)^2) (ST-MoE: 1e-3), per MoE layer. 0: off."""
    moe_capacity_factor: float = 0.0
    """0: dropless, every routed assignment is computed however uneven the load (Megatron-LM's dropless MoE).
    > 0: each expert takes at most ceil(factor * tokens * moe_top_k / moe_experts) assignments per forward
    (tokens: the micro-batch's, on this rank), keeping its highest-scoring ones (router probability); a
    dropped assignment contributes nothing, the token keeping its other experts, the shared experts and the
    residual. 1.0 is exactly the balanced load; the diagnostics log the dropped share (moe_dropped)."""
    moe_impl: MoEImpl = MoEImpl.auto
    """Expert matmuls: grouped (one torch._grouped_mm per projection) | loop (one matmul per expert) | auto
    (grouped on CPU and on CUDA bf16 with compute capability >= 9.0, else loop). Same numbers either way."""
    loss_chunk_tokens: int = 2048
    """Training loss: N > 0 fuses the LM head and the cross-entropy N tokens at a time, taking both gradients
    in the forward, so no more than N x vocab logits exist at once (model/loss.py; same loss and gradients,
    same FLOPs; python -m bench.loss: no slower than whole logits, a fraction of their memory); 0 projects
    every token of a micro-batch to full-vocabulary logits at once and lets autograd keep them. Not part of
    the model's maths: a resume may change it."""


def _fail(field: str, value: object, expected: str) -> None:
    value = value.value if isinstance(value, Enum) else value  # 'diff_v1', not <Attention.diff_v1: ...>
    raise ConfigError(f"model.{field}={value!r} {expected}")


def baseline_heads(cfg: ModelConfig) -> int:
    """Query (= output) heads of the baseline: n_heads scaled by baseline_head_factor."""
    return round(cfg.baseline_head_factor * cfg.n_heads)


def moe_hidden(cfg: ModelConfig) -> int:
    """The hidden width of each expert."""
    return cfg.moe_hidden or cfg.ffn_hidden


def is_moe_layer(cfg: ModelConfig, layer_idx: int) -> bool:
    """Whether block `layer_idx`'s feed-forward is a mixture of experts (past the dense first blocks)."""
    return cfg.moe_experts > 0 and layer_idx >= cfg.moe_first_dense


def _validate_moe(cfg: ModelConfig) -> None:
    for field in ("moe_experts", "moe_hidden", "moe_shared_experts", "moe_first_dense"):
        value = getattr(cfg, field)
        if not isinstance(value, int) or value < 0:
            _fail(field, value, "must be a non-negative integer")
    for field in ("moe_bias_rate", "moe_aux_coef", "moe_z_coef", "moe_capacity_factor"):
        if not math.isfinite(getattr(cfg, field)) or getattr(cfg, field) < 0:
            _fail(field, getattr(cfg, field), "must be a finite number >= 0")
    if cfg.moe_impl not in list(MoEImpl):
        _fail("moe_impl", cfg.moe_impl, f"is not one of {[c.value for c in MoEImpl]}")
    if cfg.moe_experts and not 1 <= cfg.moe_top_k <= cfg.moe_experts:
        _fail("moe_top_k", cfg.moe_top_k, f"must be in [1, model.moe_experts={cfg.moe_experts}]")
    if cfg.moe_experts and cfg.moe_first_dense >= cfg.n_layers:
        _fail(
            "moe_first_dense",
            cfg.moe_first_dense,
            f"leaves no MoE block of model.n_layers={cfg.n_layers}; a dense model has model.moe_experts=0",
        )


def validate_model_config(cfg: ModelConfig) -> None:
    """Raises ConfigError on the first value that cannot build a model, naming the field and what it needs."""
    for field in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_hidden"):
        value = getattr(cfg, field)
        if not isinstance(value, int) or value <= 0:
            _fail(field, value, "must be a positive integer")
    _validate_moe(cfg)
    if cfg.max_seq_len <= 0:
        _fail("max_seq_len", cfg.max_seq_len, "must be a positive integer")
    for field in ("rope_theta", "norm_eps", "init_std", "baseline_head_factor"):
        if not math.isfinite(getattr(cfg, field)) or getattr(cfg, field) <= 0:
            _fail(field, getattr(cfg, field), "must be a finite number > 0")
    for field, choices in (
        ("attention", Attention),
        ("pairing", Pairing),
        ("lambda_mode", LambdaMode),
        ("attn_impl", AttnImpl),
    ):
        # A config built in Python is not checked by OmegaConf; a composed one already was.
        if getattr(cfg, field) not in list(choices):
            _fail(field, getattr(cfg, field), f"is not one of {[c.value for c in choices]}")
    if cfg.head_dim % 2:
        _fail("head_dim", cfg.head_dim, "must be even: rotary embeddings rotate pairs of channels")
    if cfg.n_heads % cfg.n_kv_heads:
        raise ConfigError(
            f"model.n_heads={cfg.n_heads} must be divisible by model.n_kv_heads={cfg.n_kv_heads} (GQA groups)"
        )
    _check_variant(cfg)
    if cfg.doc_positions and not cfg.doc_mask:
        _fail(
            "doc_positions", cfg.doc_positions, "needs model.doc_mask=true (positions restart per document)"
        )
    if not isinstance(cfg.loss_chunk_tokens, int) or cfg.loss_chunk_tokens < 0:
        _fail("loss_chunk_tokens", cfg.loss_chunk_tokens, "must be 0 (whole logits) or a token count > 0")
    if not -1 <= cfg.eot_token < cfg.vocab_size:
        _fail("eot_token", cfg.eot_token, f"must be -1 (from the dataset) or in [0, {cfg.vocab_size})")


def _check_variant(cfg: ModelConfig) -> None:
    """The attention variant's own constraints: ablation fields only with DIFF V2, the baseline's head factor,
    DIFF V1's even head counts, a cross-group pairing with groups to cross."""
    if cfg.attention != "diff_v2":
        for field, default in (("pairing", "grouped"), ("lambda_mode", "sigmoid")):
            if getattr(cfg, field) != default:
                ablation = f"is a DIFF V2 ablation; model.attention={str(cfg.attention)!r}"
                _fail(field, getattr(cfg, field), ablation)
    if cfg.attention != "baseline" and cfg.baseline_head_factor != 1.0:
        _fail(
            "baseline_head_factor",
            cfg.baseline_head_factor,
            f"must be 1.0 unless model.attention='baseline' (got {str(cfg.attention)!r})",
        )
    if cfg.attention == "baseline":
        heads = cfg.baseline_head_factor * cfg.n_heads
        if abs(heads - round(heads)) > 1e-9 or round(heads) % cfg.n_kv_heads:
            _fail(
                "baseline_head_factor",
                cfg.baseline_head_factor,
                f"times model.n_heads={cfg.n_heads} must be a whole number of heads divisible by "
                f"model.n_kv_heads={cfg.n_kv_heads}",
            )
    if cfg.attention == "diff_v1" and (cfg.n_heads % 2 or cfg.n_kv_heads % 2):
        raise ConfigError(
            f"model.attention='diff_v1' needs even model.n_heads={cfg.n_heads} and model.n_kv_heads="
            f"{cfg.n_kv_heads}: V1 splits them into h/2 differential heads of two sub-heads each"
        )
    if cfg.attention == "diff_v2" and cfg.pairing == "cross_group" and cfg.n_kv_heads < 2:
        _fail(
            "pairing",
            cfg.pairing,
            f"needs model.n_kv_heads >= 2 (got {cfg.n_kv_heads}): a single group cannot be crossed",
        )
