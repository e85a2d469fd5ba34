"""Test hooks that break a run on purpose (debug.* in the config), so tests can prove the recovery paths.

Kept apart from the loop's real work: a real run leaves debug.fault=none and none of this fires.
"""

from __future__ import annotations

import os

import torch

from train.config import DebugConfig, Fault

EXIT_INJECTED_CRASH = 17
"""Exit code of debug.fault=crash, unlike any train/__main__ uses: a test tells the injected crash apart."""


def restart_count() -> int:
    """torchrun's attempt number (0 first): an injected crash fires once, so the restart can recover."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


class FaultInjector:
    def __init__(self, cfg: DebugConfig, rank: int) -> None:
        self.cfg, self.rank = cfg, rank

    def before_step(self, step: int) -> None:
        """debug.fault=crash: debug.fault_rank exits hard (no cleanup) at debug.fault_step, on attempt 0."""
        cfg = self.cfg
        if cfg.fault != Fault.crash or step != cfg.fault_step or self.rank != cfg.fault_rank:
            return
        if restart_count() == 0:
            print(f"[rank {self.rank}] debug.fault=crash at step {step}: exiting hard", flush=True)
            os._exit(EXIT_INJECTED_CRASH)

    def loss(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """debug.fault=nan_loss: the loss of debug.fault_step becomes NaN on every rank."""
        if self.cfg.fault == Fault.nan_loss and step == self.cfg.fault_step:
            return loss * float("nan")
        return loss
