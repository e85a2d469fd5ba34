"""Everything a restart needs, behind one Stateful: model, optimizer, LR schedule, loader, RNG, counters.

DCP calls `state_dict()` to build what it saves (and, on load, the template it fills), then
`load_state_dict()` with the filled template. Model and optimizer go through get_state_dict /
set_state_dict, whose keys are the unsharded parameter names: a checkpoint saved by 2 FSDP ranks loads
into 1 process (or 8) and DCP reshards it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful

from train.optim import LRSchedule
from train.spikes import SpikeCounter


class StatefulLoader(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], allow_fingerprint_mismatch: bool = False) -> None: ...


@dataclass
class Counters:
    """Scalars of the run: where it is and what it is called."""

    step: int = 0
    """Optimizer steps completed."""
    tokens_seen: int = 0
    """Training tokens consumed by the whole job."""
    wandb_id: str = ""
    """wandb run id, so a resumed job continues the same wandb run."""
    config_yaml: str = ""
    """The resolved config the checkpoint was written under."""
    loss_spikes: SpikeCounter = field(default_factory=lambda: SpikeCounter(3.0, 50))
    grad_spikes: SpikeCounter = field(default_factory=lambda: SpikeCounter(3.0, 50))


class TrainState(Stateful):
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: LRSchedule,
        loader: StatefulLoader,
        counters: Counters,
        allow_fingerprint_mismatch: bool = False,
    ) -> None:
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.loader, self.counters = loader, counters
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
            "counters": {
                "step": c.step,
                "tokens_seen": c.tokens_seen,
                "wandb_id": c.wandb_id,
                "config_yaml": c.config_yaml,
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
        c.wandb_id, c.config_yaml = str(saved["wandb_id"]), str(saved["config_yaml"])
        c.loss_spikes.load_state_dict(saved["loss_spikes"])
        c.grad_spikes.load_state_dict(saved["grad_spikes"])
