"""Activation checkpointing of the transformer blocks: none, full, every_k, or selective (per op).

full / every_k keep only each checkpointed block's input and rerun the whole block in the backward.
selective keeps what is expensive to recompute and reruns only the cheap rest, per op
(torch.utils.checkpoint's selective checkpoint contexts; torchtitan's op-level SAC is the model): the
outputs of every matmul (the projections, SwiGLU's w1 / w3 / w2) and of the attention kernel are saved,
while the elementwise work between them (RMSNorm, RoPE, SiLU and its product, DIFF V2's
`a1 - lambda * a2`, the residual adds) is recomputed. That recompute costs no matmul FLOPs, and the
activations it frees are the many same-sized elementwise outputs autograd would otherwise keep, so the
memory lies between none and full at close to none's speed.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from train.config import ParallelConfig

_aten = torch.ops.aten
SAVED_OPS: frozenset = frozenset(
    op
    for op in (
        # matmuls, as nn.Linear and torch.matmul reach the dispatcher (linear stays whole on some backends)
        _aten.mm.default,
        _aten.addmm.default,
        _aten.bmm.default,
        _aten.linear.default,
        # the SDPA kernels, per device and backend
        _aten._scaled_dot_product_flash_attention.default,
        _aten._scaled_dot_product_flash_attention_for_cpu.default,
        _aten._scaled_dot_product_efficient_attention.default,
        _aten._scaled_dot_product_cudnn_attention.default,
        _aten._scaled_dot_product_attention_math.default,
        getattr(getattr(torch.ops, "flash_attn", None), "_flash_attn_forward", None),
        getattr(getattr(torch.ops, "flash_attn", None), "_flash_attn_varlen_forward", None),
    )
    if op is not None
)
"""Ops whose outputs `selective` keeps; every other op of a block is recomputed in the backward."""


def _save_matmuls_and_attention(ctx: object, op: object, *args: object, **kwargs: object) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_contexts() -> tuple:
    return create_selective_checkpoint_contexts(_save_matmuls_and_attention)


def checkpointed_blocks(n_layers: int, pcfg: ParallelConfig) -> list[int]:
    """Indices of the blocks that activation checkpointing wraps (the planner counts the same ones)."""
    mode = pcfg.activation_checkpointing
    if mode == "none":
        return []
    every = pcfg.ac_every if mode == "every_k" else 1
    return [i for i in range(n_layers) if i % every == 0]


def apply_activation_checkpointing(layers: nn.ModuleList, pcfg: ParallelConfig) -> None:
    """Wraps blocks of `layers` in place per parallel.activation_checkpointing."""
    wrap = checkpoint_wrapper
    if pcfg.activation_checkpointing == "selective":
        wrap = partial(checkpoint_wrapper, context_fn=_selective_contexts)
    for i in checkpointed_blocks(len(layers), pcfg):
        # No RNG to preserve: the blocks have no dropout.
        layers[i] = wrap(layers[i], preserve_rng_state=False)
