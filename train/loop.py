"""The training loop: micro-steps into optimizer steps, metrics, validation, diagnostics, checkpoints.

It sees batches and a model only: data formats live in data/, sharding in train/parallel.py, the saved
state in train/state.py. Every rank runs the same code; rank 0 alone has sinks.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from model.diagnostics import DiagnosticsRecorder
from train.checkpoint import Checkpointer
from train.config import RunConfig
from train.metrics import MetricsLogger
from train.optim import LRSchedule
from train.parallel import DistInfo, autocast, grad_sync
from train.signals import StopRequest
from train.state import Counters, TrainState
from train.throughput import mfu, peak_flops, peak_memory_gb

Batch = tuple[torch.Tensor, torch.Tensor]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the run stops without writing a checkpoint."""


@dataclass
class LoopParts:
    """What the loop drives; built by train.run."""

    cfg: RunConfig
    info: DistInfo
    model: nn.Module
    """The wrapped model (FSDP / DDP / plain) the loop calls."""
    raw_model: nn.Module
    """The Transformer inside it: flops_per_token, diagnostics."""
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    train_loader: Any
    val_loader: Any
    counters: Counters
    state: TrainState
    checkpointer: Checkpointer
    logger: MetricsLogger
    grad_accum: int
    config_yaml: str


def lm_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(inputs)
    # Logits may come back in bf16; the softmax and the mean are taken in fp32.
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def _full(x: torch.Tensor) -> torch.Tensor:
    return x.full_tensor() if isinstance(x, DTensor) else x


def _restart_count() -> int:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


class Trainer:
    def __init__(self, parts: LoopParts) -> None:
        self.p = parts
        self.cfg, self.info = parts.cfg, parts.info
        self.device = parts.info.device
        self.stop = StopRequest()
        self._batches: Iterator[Batch] = iter(parts.train_loader)
        self.peak = peak_flops(self.device, self.cfg.trainer.peak_tflops)
        self.flops_per_token = parts.raw_model.flops_per_token(self.cfg.trainer.seq_len)
        self.last_batch: Batch | None = None
        self.stop_agreed = False
        """Whether any rank had a stop signal at the last step's all-reduce."""

    def _next_batch(self) -> Batch:
        try:
            inputs, targets = next(self._batches)
        except StopIteration:  # an epoch ended; the loader's next iterator starts the next one
            self._batches = iter(self.p.train_loader)
            inputs, targets = next(self._batches)
        batch = (inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True))
        self.last_batch = batch
        return batch

    def _maybe_fault(self, step: int) -> None:
        t = self.cfg.trainer
        crash = t.fault == "crash" and step == t.fault_step and self.info.rank == t.fault_rank
        if crash and _restart_count() == 0:
            print(f"[rank {self.info.rank}] trainer.fault=crash at step {step}: exiting hard", flush=True)
            os._exit(17)

    def train_step(self, step: int) -> tuple[float, float, float]:
        """One optimizer step over grad_accum micro-batches; returns (loss, grad_norm, lr) on all ranks."""
        p, t = self.p, self.cfg.trainer
        lr = p.schedule.apply()
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(p.grad_accum):
            inputs, targets = self._next_batch()
            with grad_sync(p.model, micro == p.grad_accum - 1):
                with autocast(self.cfg.parallel, self.info):
                    loss = lm_loss(p.model, inputs, targets)
                if t.fault == "nan" and step == t.fault_step:
                    loss = loss * float("nan")
                (loss / p.grad_accum).backward()
            loss_sum += loss.detach()
        # One all-reduce carries the loss and whether any rank was asked to stop.
        packed = torch.stack(
            [loss_sum / p.grad_accum, torch.tensor(float(self.stop.requested), device=self.device)]
        )
        dist.all_reduce(packed)
        loss_value = packed[0].item() / self.info.world_size
        # Act on the agreed flag only: a signal landing after the all-reduce waits for the next step, so
        # that every rank enters the checkpoint collectives at the same step.
        self.stop_agreed = packed[1].item() > 0
        if t.detect_anomaly_nan and not math.isfinite(loss_value):
            raise TrainingDiverged(
                f"loss is {loss_value} at step {step} (lr {lr:.3g}); stopping without a checkpoint. "
                f"Lower optim.lr or raise optim.warmup_steps; the last good checkpoint is in "
                f"{p.checkpointer.root}"
            )
        max_norm = t.grad_clip if t.grad_clip > 0 else math.inf
        grad_norm = _full(torch.nn.utils.clip_grad_norm_(p.model.parameters(), max_norm)).item()
        p.optimizer.step()
        p.optimizer.zero_grad(set_to_none=True)
        return loss_value, grad_norm, lr

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over trainer.eval_batches micro-batches per rank of the val split, from its start."""
        p = self.p
        p.model.eval()
        p.val_loader.reset()
        totals = torch.zeros(2, device=self.device)
        for i, (inputs, targets) in enumerate(p.val_loader):
            if i >= self.cfg.trainer.eval_batches:
                break
            with autocast(self.cfg.parallel, self.info):
                totals[0] += lm_loss(p.model, inputs.to(self.device), targets.to(self.device))
            totals[1] += 1
        dist.all_reduce(totals)
        p.model.train()
        return (totals[0] / totals[1].clamp(min=1)).item()

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """DIFF diagnostics on the last training micro-batch (rank 0's values are logged)."""
        inputs, _ = self.last_batch
        with DiagnosticsRecorder(self.p.raw_model) as rec, autocast(self.cfg.parallel, self.info):
            self.p.model(inputs)
        return rec.summary()

    def save(self, step: int, block: bool = False) -> None:
        self.p.checkpointer.save(self.p.state, step, self.p.config_yaml, block=block)

    def run(self) -> dict[str, Any]:
        """Trains to trainer.max_steps (or a stop signal); returns the final metrics."""
        p, t, c = self.p, self.cfg.trainer, self.p.counters
        ckpt_interval = self.cfg.checkpoint.interval
        start_step, started = c.step, time.perf_counter()
        window_tokens, window_time = 0, 0.0
        last_row: dict[str, Any] = {}
        last_saved = c.step
        val_loss = None
        self.stop.install()
        p.model.train()
        try:
            while c.step < t.max_steps:
                step = c.step + 1
                self._maybe_fault(step)
                tick = time.perf_counter()
                loss, grad_norm, lr = self.train_step(step)
                window_time += time.perf_counter() - tick
                c.step, c.tokens_seen = step, c.tokens_seen + t.global_batch_tokens
                window_tokens += t.global_batch_tokens
                c.loss_spikes.update(loss)
                c.grad_spikes.update(grad_norm)
                if step % t.log_interval == 0 or step == start_step + 1 or step == t.max_steps:
                    tps = window_tokens / window_time
                    per_device = tps / self.info.world_size
                    last_row = {
                        "step": step,
                        "loss": loss,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "tokens_per_s": tps,
                        "tokens_per_s_per_device": per_device,
                        "mfu": mfu(self.flops_per_token, per_device, self.peak),
                        "peak_mem_gb": peak_memory_gb(self.device),
                        "tokens_seen": c.tokens_seen,
                        # spikes in the steps since the previous row (train/spikes.py), then the totals
                        "loss_spike": c.loss_spikes.take_pending(),
                        "grad_spike": c.grad_spikes.take_pending(),
                        "loss_spikes": c.loss_spikes.count,
                        "grad_spikes": c.grad_spikes.count,
                    }
                    p.logger.log(last_row)
                    window_tokens, window_time = 0, 0.0
                if t.diag_interval and step % t.diag_interval == 0:
                    p.logger.log({"step": step, **self.diagnostics()})
                if t.eval_interval and step % t.eval_interval == 0 and step < t.max_steps:
                    val_loss = self.evaluate()
                    p.logger.log({"step": step, "val_loss": val_loss})
                stop_reason = None
                if self.stop_agreed:
                    stop_reason = self.stop.signal_name or "a signal to another rank"
                elif step == t.stop_at_step:
                    stop_reason = "trainer.stop_at_step"
                if stop_reason is not None:
                    self.save(step, block=True)
                    if self.info.is_main:
                        saved = "checkpoint saved" if self.cfg.checkpoint.enabled else "checkpoints off"
                        print(f"stopped by {stop_reason} at step {step}: {saved}", flush=True)
                    return {"step": step, "stopped_by": stop_reason}
                if ckpt_interval and step % ckpt_interval == 0 and step < t.max_steps:
                    self.save(step)
                    last_saved = step
                p.checkpointer.poll()
            val_loss = self.evaluate()
            p.logger.log({"step": c.step, "val_loss": val_loss})
            if last_saved != c.step:
                self.save(c.step, block=True)
            p.checkpointer.wait()
        finally:
            self.stop.uninstall()
        return {
            "step": c.step,
            "loss": last_row.get("loss"),
            "val_loss": val_loss,
            "tokens_seen": c.tokens_seen,
            "tokens_per_s": last_row.get("tokens_per_s"),
            "loss_spikes": c.loss_spikes.count,
            "grad_spikes": c.grad_spikes.count,
            "wall_s": time.perf_counter() - started,
        }
