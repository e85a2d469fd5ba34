"""Tensor and sequence parallel plans (DTensor `parallelize_module`) for the baseline, DIFF V1 and DIFF V2.

Megatron's layout as torchtitan applies it: inside a block, Q, K, V (and DIFF V2's lambda projection) and the
FFN gate/up are column-parallel, O and the FFN down projection row-parallel, so each block costs one
all-gather and one reduce-scatter per sub-layer. Between them the residual stream stays split along the
sequence (sequence parallel), so the norms run on 1/tp of the tokens. The head is column-parallel over the
vocabulary and the loss is computed on the vocab-sharded logits (`loss_parallel`) without gathering them.

The DIFF rule: column sharding is contiguous, so rank r holds query heads [r * Hq/tp, (r + 1) * Hq/tp) and
K/V heads [r * h_kv/tp, ...). DIFF V2's pairs (2j, 2j+1) are adjacent and a GQA group is a contiguous run of
2h/h_kv query heads, so when tp divides h_kv (train/degrees.py refuses otherwise) every pair, its lambda row
and the K/V head it reads are on one rank: the subtraction needs no collective. DIFF V1 likewise when tp
divides h_kv / 2 (its values are 2d wide, one per pair of key sub-heads).

An MoE feed-forward (model/moe.py) is not split: under sequence parallel each TP rank already holds its own
1/tp of the tokens, so it routes them through the whole router and experts and returns its shard, with no
collective in the layer and 1/tp of the expert FLOPs per rank, the same share as the dense FFN's column
split. Its parameters are replicated over the TP group and each rank's gradient covers its own tokens, so
they are summed over the group with DIFF V1's shared parameters (`sum_tp_partial_grads`). With expert
parallel the ep ranks that exchange tokens are the ones at the same TP index (train/expert_parallel.py).

The model stays free of torch.distributed: its attention reshapes take the head count from the tensor
(`view(B, N, -1, d)`), so a rank holding a slice of the heads runs the same code.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from model import Transformer
from model.moe import MoE

TP_PARTIAL = "_tp_partial_params"
"""Attribute naming a module's plain (unsharded) parameters of which each TP rank has a partial gradient."""


def _block_plan(block: nn.Module) -> dict[str, object]:
    attn = block.attention
    # The attention call passes (x, rope, cache, docs): only x is a sequence-sharded activation.
    plan: dict[str, object] = {
        "attention_norm": SequenceParallel(),
        "attention": PrepareModuleInput(
            input_layouts=(Shard(1), None, None, None),
            desired_input_layouts=(Replicate(), None, None, None),
        ),
        "attention.q_proj": ColwiseParallel(),
        "attention.k_proj": ColwiseParallel(),
        "attention.v_proj": ColwiseParallel(),
        "attention.o_proj": RowwiseParallel(output_layouts=Shard(1)),
        "ffn_norm": SequenceParallel(),
        **(_moe_plan() if isinstance(block.feed_forward, MoE) else _dense_ffn_plan()),
    }
    if getattr(attn, "lambda_proj", None) is not None:  # DIFF V2: one lambda row per output head
        plan["attention.lambda_proj"] = ColwiseParallel()
    return plan


def _dense_ffn_plan() -> dict[str, object]:
    return {
        # the feed-forward call passes (x, aux_losses)
        "feed_forward": PrepareModuleInput(
            input_layouts=(Shard(1), None), desired_input_layouts=(Replicate(), None)
        ),
        "feed_forward.w1": ColwiseParallel(),
        "feed_forward.w3": ColwiseParallel(),
        "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
    }


class _VocabParallelHead(ColwiseParallel):
    """ColwiseParallel for the LM head (model/loss.py's LMHead), called as head(hidden, targets): hidden is
    gathered along the sequence (targets, whole on every TP rank, pass as they are); it returns
    vocab-sharded logits, or with targets the loss (whole or chunked, on the sharded logits) as it is."""

    @staticmethod
    def _prepare_input_fn(input_layouts, desired_input_layouts, mod, inputs, device_mesh):  # noqa: ANN001, ANN205
        hidden = ColwiseParallel._prepare_input_fn(
            input_layouts, desired_input_layouts, mod, inputs, device_mesh
        )
        return (hidden, *inputs[1:])

    @staticmethod
    def _prepare_output_fn(output_layouts, use_local_output, mod, outputs, device_mesh):  # noqa: ANN001, ANN205
        if outputs.ndim == 0:  # the loss, replicated on the TP ranks
            return outputs
        return ColwiseParallel._prepare_output_fn(output_layouts, use_local_output, mod, outputs, device_mesh)


def _moe_plan() -> dict[str, object]:
    """The MoE feed-forward stays in sequence parallel: each TP rank routes its own tokens through whole
    (replicated) router and experts, with no collective; the parameters' gradients are partial (marked)."""
    # The norm hands over a Shard(1) DTensor; the block's residual stream is the local shard, as the MoE's
    # output is.
    return {
        "feed_forward": PrepareModuleInput(
            input_layouts=(Shard(1), None), desired_input_layouts=(Shard(1), None), use_local_output=True
        )
    }


def _mark_partial_params(module: nn.Module) -> None:
    """Names the module's parameters the plan left whole of which each TP rank has a partial gradient: DIFF
    V1's lambda vectors and sub-norm (every local head uses them, so a rank's gradient sums its own heads
    only) and an MoE's router and experts (a rank's gradient sums its own sequence shard's tokens only).
    Expert parallel, applied later, may make the experts DTensors on the ep mesh; the names still hold."""
    names = tuple(name for name, p in module.named_parameters() if not isinstance(p, DTensor))
    if names:
        setattr(module, TP_PARTIAL, names)


def apply_tensor_parallel(model: Transformer, tp_mesh: DeviceMesh) -> None:
    """Shards `model` (on the meta device, before FSDP and activation checkpointing) over `tp_mesh`."""
    parallelize_module(
        model,
        tp_mesh,
        {
            "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
            "norm": SequenceParallel(),
            # vocab-sharded logits stay DTensors for loss_parallel
            "output": _VocabParallelHead(
                input_layouts=Shard(1), output_layouts=Shard(-1), use_local_output=False
            ),
        },
    )
    for block in model.layers:
        parallelize_module(block, tp_mesh, _block_plan(block))
        _mark_partial_params(block.attention)
        if isinstance(block.feed_forward, MoE):
            _mark_partial_params(block.feed_forward)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def sum_tp_partial_grads(model: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Adds up over the TP ranks the gradients of the parameters `_mark_partial_params` named, once per
    optimizer step after the last micro-step's backward."""
    for module in model.modules():
        for name in getattr(module, TP_PARTIAL, ()):
            grad = module.get_parameter(name).grad
            if grad is not None:
                # With FSDP the grad is this rank's dp shard (with EP: of its ep rank's experts); the TP
                # ranks of a group hold the same shard.
                dist.all_reduce(_local(grad), group=tp_mesh.get_group())
