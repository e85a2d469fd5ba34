"""Expert parallel: each MoE layer's routed experts split over the ep ranks, tokens sent there by all-to-all.

The mesh: ep divides dp_shard, and the dp_shard dim splits into (dp_shard_mod_ep, ep), ep innermost
(`expert_mesh`, torchtitan's dp_shard_mod_ep x dp_shard_in_ep). The ep ranks of one group hold different
experts and exchange tokens; the ranks at the same ep index (dp_shard_mod_ep of them, and the dp_replicate
replicas) hold the same experts: the "expert data-parallel" group. With tensor parallel the ep ranks that
exchange tokens are those at one TP index: each TP rank routes its own sequence shard
(train/tensor_parallel.py), and the TP ranks of a group hold the same experts, whose gradients are summed
over them there.

Installed by train/ on the meta model before FSDP (model/ stays free of torch.distributed): each
GroupedExperts' w1, w2, w3 [E, ...] become DTensors sharded on the expert dim over the ep mesh (a rank's
group holds E / ep whole experts), and the module's forward is replaced by dispatch -> the rank's experts
(`GroupedExperts.run`) -> combine:

  1. the routed slots arrive sorted by global expert, so the slots for rank r's experts are one contiguous
     run; one all-to-all of the per-expert counts tells each rank what it will receive;
  2. all-to-all of the slots (by source rank, then expert), reordered to by expert, then source;
  3. the local experts run; the reorder is undone and a second all-to-all sends each slot home.

Over the expert data-parallel group the experts are FSDP-sharded (train/parallel.py: `fully_shard` on each
GroupedExperts with that group's mesh, HSDP when there are replicas), not kept whole with an all-reduce of
their gradients, because that is the one way that is right for everything downstream at once:
- memory: the experts are most of an MoE's parameters; sharded, their gradients and AdamW moments are
  split over all dp ranks like the rest of the model's, where replicas would hold them dp_shard / ep times;
- gradients: FSDP's reduce-scatter (and all-reduce over replicas) averages them over the group, in the same
  backward as every other parameter's, and skips it on accumulation micro-steps like theirs;
- DCP: the weights are DTensors on (expert dp mesh, ep) at their global shape [E, ...], saved once and
  resharded to any layout (also one rank, or another ep) on load, like any FSDP + TP parameter;
- the clipping norm: each gradient is a DTensor whose norm torch completes over both dims, so every
  expert weight counts once, and the optimizer steps each shard once.
The gradients FSDP produces are the mean over the group of the sum, through the all-to-all's backward, of
the ep ranks' losses, where every other gradient is the mean over all dp ranks' losses: `scale_expert_grads`
divides them by ep.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist
from torch import nn
from torch._subclasses.fake_tensor import is_fake
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Shard, distribute_tensor

from model.moe import GroupedExperts

_WEIGHTS = ("w1", "w2", "w3")


class _AllToAll(torch.autograd.Function):
    """all_to_all_single of rows [M, D] with autograd: the backward sends the gradients back the same way."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:  # noqa: ANN001
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty(sum(out_splits), x.shape[1])
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # noqa: ANN001
        out_splits, in_splits = ctx.splits
        grad_in = grad.new_empty(sum(in_splits), grad.shape[1])
        dist.all_to_all_single(grad_in, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return grad_in, None, None, None


def expert_modules(model: nn.Module) -> list[GroupedExperts]:
    return [m for m in model.modules() if isinstance(m, GroupedExperts)]


def expert_params(model: nn.Module) -> set[nn.Parameter]:
    """The routed experts' weights."""
    return {getattr(m, name) for m in expert_modules(model) for name in _WEIGHTS}


def apply_expert_parallel(model: nn.Module, ep_mesh: DeviceMesh) -> None:
    """Shards every GroupedExperts' weights on the expert dim over `ep_mesh` and routes its tokens there
    (FSDP, applied next, shards them further over the expert data-parallel group and casts them to its
    compute dtype in each forward)."""
    for module in expert_modules(model):
        for name in _WEIGHTS:
            weight = getattr(module, name)
            sharded = distribute_tensor(weight.data, ep_mesh, [Shard(0)])
            module.register_parameter(name, nn.Parameter(sharded, requires_grad=weight.requires_grad))
        module.forward = partial(_dispatch_run_combine, module, ep_mesh)


def _dispatch_run_combine(
    experts: GroupedExperts, mesh: DeviceMesh, x: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """GroupedExperts.forward under expert parallel: x [M, D] sorted by global expert, counts [E]."""
    ep, group = mesh.size(), mesh.get_group()
    sent = counts.view(ep, -1)  # [ep, E / ep]: slots for each rank's experts
    received = torch.empty_like(sent)  # [source rank, my experts]
    dist.all_to_all_single(received, sent.contiguous(), group=group)
    in_splits, out_splits, order = _exchange_layout(x.shape[0], sent, received)
    arrived = _AllToAll.apply(x, out_splits, in_splits, group)
    # FSDP gathered the group's experts: each weight is this ep rank's E / ep experts, in its compute dtype.
    weights = (getattr(experts, name).to_local() for name in _WEIGHTS)
    y = experts.run(arrived[order], received.sum(0), *weights)
    back = torch.empty_like(y).index_copy_(0, order, y)
    return _AllToAll.apply(back, in_splits, out_splits, group)


def _exchange_layout(
    rows: int, sent: torch.Tensor, received: torch.Tensor
) -> tuple[list[int], list[int], torch.Tensor]:
    """Rows sent to each ep rank, rows received from each, and the order putting the received rows by expert.

    On fake tensors (the planner, train/plan) the counts have no values: the routing is taken as even, every
    rank sending rows / ep to each, which is the steady state the balancing steers to."""
    if is_fake(sent):
        ep = sent.shape[0]
        even = [rows // ep + (r < rows % ep) for r in range(ep)]
        return even, even, torch.arange(rows, device=sent.device)
    return sent.sum(1).tolist(), received.sum(1).tolist(), _source_major_to_expert_major(received)


def _source_major_to_expert_major(received: torch.Tensor) -> torch.Tensor:
    """Row indices that reorder slots laid out by (source rank, expert) into (expert, source rank)."""
    n_sources, n_experts = received.shape
    starts = (received.flatten().cumsum(0) - received.flatten()).view(n_sources, n_experts).tolist()
    sizes = received.tolist()
    runs = [
        torch.arange(starts[r][e], starts[r][e] + sizes[r][e])
        for e in range(n_experts)
        for r in range(n_sources)
    ]
    return torch.cat(runs).to(received.device)


@torch.no_grad()
def scale_expert_grads(model: nn.Module, ep: int) -> None:
    """Divides the expert gradients (FSDP's mean over the expert data-parallel group of the sums over ep
    ranks) by ep: the mean over all dp ranks that FSDP takes for every other gradient."""
    for param in expert_params(model):
        if param.grad is not None:
            param.grad.div_(ep)
