"""The training loop: micro-steps into optimizer steps, metrics, validation, diagnostics, checkpoints.

It sees batches and a model only: data formats live in data/, sharding in train/parallel.py, the saved
state in train/state.py, when to checkpoint in train/checkpoint.py. Every rank runs the same code; rank 0
alone has sinks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

import errors
from conf import RunConfig
from model import Transformer
from model.diagnostics import DiagnosticsRecorder
from train.checkpoint import Checkpointer
from train.debug import FaultInjector
from train.downstream import DownstreamEval
from train.metrics import MetricsLogger, Row
from train.parallel import DistInfo, autocast, finish_gradients, grad_sync, loss_context
from train.signals import StopRequest
from train.state import Batch, Loader, TrainState
from train.throughput import mfu, peak_flops, peak_memory_gb


class TrainingDiverged(errors.Diverged, RuntimeError):
    """The loss became NaN or inf; the run stops without writing a checkpoint."""


@dataclass(kw_only=True)
class LoopParts:
    """What the loop drives besides the saved state; built by train.run."""

    cfg: RunConfig
    info: DistInfo
    state: TrainState
    """The wrapped model, optimizer, LR schedule, train loader and counters: what a checkpoint holds."""
    raw_model: Transformer
    """The Transformer inside state.model: flops_per_token, diagnostics."""
    val_loader: Loader
    checkpointer: Checkpointer
    logger: MetricsLogger
    grad_accum: int
    downstream: DownstreamEval | None = None
    """trainer.downstream_tasks, when trainer.downstream_interval is set."""


@dataclass
class StepResult:
    """One optimizer step, as every rank agrees on it after the all-reduce."""

    loss: float
    """The language-modelling loss (without auxiliary losses)."""
    grad_norm: float
    lr: float
    aux_loss: float | None = None
    """The model's weighted auxiliary losses (MoE balancing, z-loss), added to the loss it trained on; None
    when the model has none."""


@dataclass
class RunResult:
    """How Trainer.run ended: trained to trainer.max_steps, or stopped (checkpointed) to be resumed."""

    step: int
    stopped_by: str | None = None
    """What stopped the run early (a signal name, trainer.stop_at_step); None: it reached max_steps."""
    loss: float | None = None
    """The last logged training loss."""
    val_loss: float | None = None
    tokens_seen: int = 0
    tokens_per_s: float | None = None
    """Throughput of the last logged window."""
    loss_spikes: int = 0
    grad_spikes: int = 0
    wall_s: float = 0.0

    @property
    def stopped(self) -> bool:
        return self.stopped_by is not None

    def summary(self) -> Row:
        """The end-of-run row (metrics.jsonl's `end` event, wandb's summary, the console's last line)."""
        return {
            "step": self.step,
            "loss": self.loss,
            "val_loss": self.val_loss,
            "tokens_seen": self.tokens_seen,
            "tokens_per_s": self.tokens_per_s,
            "loss_spikes": self.loss_spikes,
            "grad_spikes": self.grad_spikes,
            "wall_s": self.wall_s,
        }


def lm_loss(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean cross-entropy in fp32; the model computes it (whole or chunked logits, model/loss.py). With TP the
    logits are vocab-sharded and the loss, replicated on the TP ranks, comes back as a plain tensor. Also the
    sum of the auxiliary losses the model returned (MoE balancing, z-loss; None: none)."""
    loss, aux_losses = model(inputs, targets=targets, return_aux=True)
    aux = torch.stack([_full(x).float() for x in aux_losses.values()]).sum() if aux_losses else None
    return _full(loss), aux


def _full(x: torch.Tensor) -> torch.Tensor:
    return x.full_tensor() if isinstance(x, DTensor) else x


class Trainer:
    def __init__(self, parts: LoopParts) -> None:
        self.parts = parts
        self.cfg, self.info = parts.cfg, parts.info
        self.device = parts.info.device
        self.stop = StopRequest()
        self.faults = FaultInjector(parts.cfg.debug, parts.info.rank)
        # The loader yields endlessly (epoch after epoch); the loop bounds it by trainer.max_steps.
        self._batches: Iterator[Batch] = iter(parts.state.loader)
        self.peak = peak_flops(self.device, self.cfg.trainer.peak_tflops)
        self.flops_per_token = parts.raw_model.flops_per_token(self.cfg.trainer.seq_len)
        self.last_batch: Batch | None = None
        self.stop_agreed = False
        """Whether any rank had a stop signal at the last step's all-reduce."""
        self._window_tokens, self._window_s = 0, 0.0
        """Tokens and seconds of training steps since the last logged row (eval and saves excluded)."""

    def _next_batch(self) -> Batch:
        inputs, targets = next(self._batches)
        batch = (inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True))
        self.last_batch = batch
        return batch

    def train_step(self, step: int) -> StepResult:
        """One optimizer step over grad_accum micro-batches, the same result on all ranks."""
        parts, trainer = self.parts, self.cfg.trainer
        lr = parts.state.schedule.apply()
        loss_sum, aux_sum = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        aux = None
        for micro in range(parts.grad_accum):
            inputs, targets = self._next_batch()
            with grad_sync(parts.state.model, micro == parts.grad_accum - 1), loss_context(self.info):
                with autocast(self.cfg.parallel, self.info):
                    loss, aux = lm_loss(parts.state.model, inputs, targets)
                    loss = self.faults.loss(loss, step)
                ((loss if aux is None else loss + aux) / parts.grad_accum).backward()
            loss_sum += loss.detach()
            if aux is not None:
                aux_sum += aux.detach()
        # One all-reduce carries the loss, the auxiliary loss and whether any rank was asked to stop.
        stop = torch.tensor(float(self.stop.requested), device=self.device)
        packed = torch.stack([loss_sum / parts.grad_accum, aux_sum / parts.grad_accum, stop])
        dist.all_reduce(packed)
        # TP ranks hold the same loss: the mean over all ranks is the mean over data-parallel ranks.
        loss_value = packed[0].item() / self.info.world_size
        aux_value = None if aux is None else packed[1].item() / self.info.world_size
        # Act on the agreed flag only: a signal landing after the all-reduce waits for the next step, so
        # that every rank enters the checkpoint collectives at the same step.
        self.stop_agreed = packed[2].item() > 0
        if trainer.detect_anomaly_nan and not math.isfinite(loss_value):
            raise TrainingDiverged(
                f"loss is {loss_value} at step {step} (lr {lr:.3g}); stopping without a checkpoint. "
                f"Lower optim.lr or raise optim.warmup_steps; the last good checkpoint is in "
                f"{parts.checkpointer.root}"
            )
        max_norm = trainer.grad_clip if trainer.grad_clip > 0 else math.inf
        grad_norm = finish_gradients(parts.state.model, self.info, max_norm)
        parts.state.optimizer.step()
        parts.state.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss_value, grad_norm, lr, aux_value)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over trainer.eval_batches micro-batches per rank of the val split, from its start."""
        parts = self.parts
        parts.state.model.eval()
        parts.val_loader.reset()
        totals = torch.zeros(2, device=self.device)
        for i, (inputs, targets) in enumerate(parts.val_loader):
            if i >= self.cfg.trainer.eval_batches:
                break
            with autocast(self.cfg.parallel, self.info), loss_context(self.info):
                totals[0] += lm_loss(parts.state.model, inputs.to(self.device), targets.to(self.device))[0]
            totals[1] += 1
        dist.all_reduce(totals)
        parts.state.model.train()
        return (totals[0] / totals[1].clamp(min=1)).item()

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """DIFF diagnostics on the last training micro-batch (rank 0's values are logged)."""
        inputs, _ = self.last_batch
        recorder = DiagnosticsRecorder(self.parts.raw_model, self.cfg.trainer.diag_sequences)
        with recorder as rec, autocast(self.cfg.parallel, self.info):
            self.parts.state.model(inputs)
        return rec.summary()

    def _train_row(self, step: int, result: StepResult) -> Row:
        """The metrics row of a logged step; throughput covers the steps since the previous row."""
        counters = self.parts.state.counters
        tokens_per_s = self._window_tokens / self._window_s
        per_device = tokens_per_s / self.info.world_size
        self._window_tokens, self._window_s = 0, 0.0
        aux = {} if result.aux_loss is None else {"aux_loss": result.aux_loss}
        return {
            "step": step,
            "loss": result.loss,
            **aux,
            "lr": result.lr,
            "grad_norm": result.grad_norm,
            "tokens_per_s": tokens_per_s,
            "tokens_per_s_per_device": per_device,
            "mfu": mfu(self.flops_per_token, per_device, self.peak),
            "peak_mem_gb": peak_memory_gb(self.device),
            "tokens_seen": counters.tokens_seen,
            # spikes in the steps since the previous row (train/spikes.py), then the totals
            "loss_spike": counters.loss_spikes.take_pending(),
            "grad_spike": counters.grad_spikes.take_pending(),
            "loss_spikes": counters.loss_spikes.count,
            "grad_spikes": counters.grad_spikes.count,
            **self.parts.state.loader.metrics(),  # a mixture's tokens and epochs per source
        }

    def _stop_reason(self, step: int) -> str | None:
        if self.stop_agreed:
            return self.stop.signal_name or "a signal to another rank"
        if step == self.cfg.trainer.stop_at_step:
            return "trainer.stop_at_step"
        return None

    def _after_step(self, step: int, result: StepResult, first_step: int) -> Row | None:
        """Counters, spikes and the step's rows (metrics, diagnostics, validation); returns the metrics row
        when this step logs one."""
        parts, trainer, counters = self.parts, self.cfg.trainer, self.parts.state.counters
        counters.step, counters.tokens_seen = step, counters.tokens_seen + trainer.global_batch_tokens
        self._window_tokens += trainer.global_batch_tokens
        counters.loss_spikes.update(result.loss)
        counters.grad_spikes.update(result.grad_norm)
        row = None
        if step % trainer.log_interval == 0 or step in (first_step, trainer.max_steps):
            row = self._train_row(step, result)
            parts.logger.log(row)
        if trainer.diag_interval and step % trainer.diag_interval == 0:
            parts.logger.log({"step": step, **self.diagnostics()})
        if trainer.eval_interval and step % trainer.eval_interval == 0 and step < trainer.max_steps:
            parts.logger.log({"step": step, "val_loss": self.evaluate()})
        if parts.downstream and (step % trainer.downstream_interval == 0 or step == trainer.max_steps):
            parts.logger.log({"step": step, **parts.downstream.scores(parts.raw_model)})
        return row

    def run(self) -> RunResult:
        """Trains to trainer.max_steps, or until a stop signal or trainer.stop_at_step (checkpointed)."""
        parts, trainer, counters = self.parts, self.cfg.trainer, self.parts.state.counters
        checkpointer, state = parts.checkpointer, parts.state
        started, first_step = time.perf_counter(), counters.step + 1
        last_row: Row = {}
        self.stop.install()
        parts.state.model.train()
        try:
            while counters.step < trainer.max_steps:
                step = counters.step + 1
                self.faults.before_step(step)
                tick = time.perf_counter()
                result = self.train_step(step)
                self._window_s += time.perf_counter() - tick
                last_row = self._after_step(step, result, first_step) or last_row
                stop_reason = self._stop_reason(step)
                if stop_reason is not None:
                    checkpointer.save(state, step, block=True)
                    if self.info.is_main:
                        saved = "checkpoint saved" if self.cfg.checkpoint.enabled else "checkpoints off"
                        print(f"stopped by {stop_reason} at step {step}: {saved}", flush=True)
                    return RunResult(step=step, stopped_by=stop_reason)
                checkpointer.save_if_due(state, step, trainer.max_steps)
            val_loss = self.evaluate()
            parts.logger.log({"step": counters.step, "val_loss": val_loss})
            checkpointer.save_final(state, counters.step)
        finally:
            self.stop.uninstall()
        return RunResult(
            step=counters.step,
            loss=last_row.get("loss"),
            val_loss=val_loss,
            tokens_seen=counters.tokens_seen,
            tokens_per_s=last_row.get("tokens_per_s"),
            loss_spikes=counters.loss_spikes.count,
            grad_spikes=counters.grad_spikes.count,
            wall_s=time.perf_counter() - started,
        )
