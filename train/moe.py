"""Expert load balancing applied by training: DeepSeek-V3's auxiliary-loss-free bias update.

Every MoE router counts the routed slots each expert got in the step's training forwards (model/moe.py).
Just before the optimizer step (an optimizer pre-step hook, as torchtitan does it) the counts of all routers
are summed over all ranks in one all-reduce, so every rank moves every bias the same way and the replicas
stay identical, and each router's bias moves towards balance. The count then restarts, so it is zero
whenever a checkpoint is written; the biases themselves are persistent buffers, saved with the model.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.hooks import RemovableHandle

from model.moe import Router


def install_expert_balancing(optimizer: torch.optim.Optimizer, model: nn.Module) -> RemovableHandle | None:
    """Registers the bias update on `optimizer` for every router of `model` with model.moe_bias_rate > 0;
    None when there is none (a dense model, or the update is off)."""
    routers = [m for m in model.modules() if isinstance(m, Router) and m.bias_rate > 0]
    if not routers:
        return None

    def balance(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        loads = torch.stack([router.tokens_per_expert for router in routers])  # [routers, E]
        if dist.is_initialized():
            dist.all_reduce(loads)
        for router, load in zip(routers, loads, strict=True):
            router.balance(load)

    return optimizer.register_step_pre_hook(balance)
