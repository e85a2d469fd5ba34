"""AdamW with decay only where it belongs, and the learning-rate schedules (a tiny Stateful)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from train.config import OptimConfig

# Substrings of parameter names that never get weight decay: the token embedding (decaying it shrinks rare
# tokens' rows toward zero) and DIFF lambda projections (their scale is the signal, as for norms).
NO_DECAY_NAMES = ("tok_embeddings", "lambda", "norm")


def wants_decay(name: str, param: torch.Tensor) -> bool:
    """Matrices decay; biases, norm gains, embeddings and lambda parameters do not."""
    if param.ndim < 2:
        return False
    return not any(key in name for key in NO_DECAY_NAMES)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if wants_decay(name, param) else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    fused = str(cfg.fused).lower()
    use_fused = device.type == "cuda" if fused == "auto" else fused == "true"
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=use_fused,
    )


def lr_at(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based). Warmup is linear from lr/warmup to lr."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "cosine":
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.schedule == "wsd":
        decay_steps = max(1, round(cfg.decay_fraction * max_steps))
        decay_start = max(cfg.warmup_steps, max_steps - decay_steps)
        if step < decay_start:
            return peak
        progress = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
        return peak + (floor - peak) * progress
    raise ValueError(f"optim.schedule={str(cfg.schedule)!r} is not one of cosine | wsd | constant")


class LRSchedule:
    """Sets each param group's lr before an optimizer step; its state is the step it has reached."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int) -> None:
        self.optimizer, self.cfg, self.max_steps = optimizer, cfg, max_steps
        self.step_count = 0

    def apply(self) -> float:
        """Sets the lr for the coming step and advances; returns that lr."""
        lr = lr_at(self.step_count, self.cfg, self.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.step_count += 1
        return lr

    def state_dict(self) -> dict[str, Any]:
        # str(): a checkpoint holds plain data only (train.safe_load), not the config's enum class.
        schedule = str(self.cfg.schedule)
        return {"step_count": self.step_count, "schedule": schedule, "max_steps": self.max_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The schedule's shape comes from the (possibly edited) config, e.g. a WSD run extended past its
        # first horizon; only the position is restored.
        self.step_count = int(state["step_count"])
