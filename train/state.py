"""Everything a restart needs, behind one Stateful: model, optimizer, LR schedule, loader, RNG, counters.

DCP calls `state_dict()` to build what it saves (and, on load, the template it fills), then
`load_state_dict()` with the filled template. Model and optimizer go through get_state_dict /
set_state_dict, whose keys are the unsharded parameter names: a checkpoint saved by 2 FSDP ranks loads
into 1 process (or 8) and DCP reshards it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful

from train.optim import LRSchedule
from train.spikes import SpikeCounter

Batch = tuple[torch.Tensor, torch.Tensor]
"""(inputs, targets) of one micro-batch."""


class Loader(Protocol):
    """What training needs of a loader (data.StreamLoader, data's mixture loader): endless batches, a
    resumable position, per-source metrics, a reset for evaluation, and a close for its prefetch thread."""

    def __iter__(self) -> Iterator[Batch]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], allow_fingerprint_mismatch: bool = False) -> None: ...

    def metrics(self) -> dict[str, float]: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class Counters:
    """Where the run is, restored on resume: steps, tokens, and the spike detectors' history."""

    loss_spikes: SpikeCounter
    """Built from the trainer's settings (train.spikes.spike_counters)."""
    grad_spikes: SpikeCounter
    step: int = 0
    """Optimizer steps completed."""
    tokens_seen: int = 0
    """Training tokens consumed by the whole job."""


class TrainState(Stateful):
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: LRSchedule,
        loader: Loader,
        counters: Counters,
        *,
        wandb_id: str = "",
        allow_fingerprint_mismatch: bool = False,
    ) -> None:
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        """model: the wrapped model (FSDP / DDP / plain) that training calls."""
        self.loader, self.counters = loader, counters
        self.wandb_id = wandb_id
        """wandb run id, so a resumed job continues the same wandb run."""
        self.allow_fingerprint_mismatch = allow_fingerprint_mismatch

    def state_dict(self) -> dict[str, Any]:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        c = self.counters
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        return {
            "model": model_sd,
            "optim": optim_sd,
            "schedule": self.schedule.state_dict(),
            "loader": self.loader.state_dict(),
            # Every rank seeds alike and the loop draws no rank-specific randomness, so one stream suffices.
            "rng": rng,
            # The wandb id is saved beside the counters, where checkpoints have always held it. The run's
            # config is not in here: the Checkpointer writes it once, as config.yaml beside the shards.
            "counters": {
                "step": c.step,
                "tokens_seen": c.tokens_seen,
                "wandb_id": self.wandb_id,
                "loss_spikes": c.loss_spikes.state_dict(),
                "grad_spikes": c.grad_spikes.state_dict(),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_state_dict(
            self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )
        self.schedule.load_state_dict(state["schedule"])
        self.loader.load_state_dict(
            state["loader"], allow_fingerprint_mismatch=self.allow_fingerprint_mismatch
        )
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        c, saved = self.counters, state["counters"]
        c.step, c.tokens_seen = int(saved["step"]), int(saved["tokens_seen"])
        self.wandb_id = str(saved["wandb_id"])
        c.loss_spikes.load_state_dict(saved["loss_spikes"])
        c.grad_spikes.load_state_dict(saved["grad_spikes"])
