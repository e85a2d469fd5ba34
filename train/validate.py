"""train's value checks the schema cannot express (ranges, divisibility), each naming the offending field.

conf.validated runs them after OmegaConf has refused unknown keys, wrong types and values outside a choice
field's Enum; this module catches values that are well-typed but meaningless, before any process group,
model or dataset is touched.
"""

from __future__ import annotations

import math

from conf.schema import ConfigError, RunConfig, check_choices
from train.config import Fused, TrainerConfig
from train.degrees import check_tp_fits_model, resolve_dims

__all__ = ["ConfigError", "grad_accum_steps", "validate_run_config"]


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    # NaN compares false with everything, so it must be named before the sign is checked.
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}={value} must be a finite number {'>= 0' if allow_zero else '> 0'}")


def _spike_settings(t: TrainerConfig) -> None:
    """The spike detector's limits (train/spikes.py): a window to measure noise over, thresholds >= 0."""
    from train.spikes import WINDOW_MIN

    if t.spike_window < WINDOW_MIN:
        raise ConfigError(f"trainer.spike_window={t.spike_window} must be >= {WINDOW_MIN} steps")
    _positive("trainer.loss_spike_jump", t.loss_spike_jump, allow_zero=True)
    _positive("trainer.loss_spike_deviations", t.loss_spike_deviations, allow_zero=True)
    if t.grad_spike_factor < 1.0:
        raise ConfigError(
            f"trainer.grad_spike_factor={t.grad_spike_factor} must be >= 1 (a multiple of the median)"
        )


def grad_accum_steps(cfg: RunConfig, dp_size: int) -> int:
    """Micro-steps per optimizer step so that one step sees exactly trainer.global_batch_tokens tokens; the
    ranks of one TP group share their batches, so only the data-parallel size counts."""
    t = cfg.trainer
    per_micro_step = t.seq_len * t.micro_batch * dp_size
    if t.global_batch_tokens % per_micro_step:
        raise ConfigError(
            f"trainer.global_batch_tokens={t.global_batch_tokens} must be a multiple of trainer.seq_len * "
            f"trainer.micro_batch * data-parallel size = {t.seq_len} * {t.micro_batch} * {dp_size} = "
            f"{per_micro_step}"
        )
    return t.global_batch_tokens // per_micro_step


def _downstream_settings(t: TrainerConfig) -> None:
    """Downstream tasks need an interval and files that load (a bad one fails now, not at the first score)."""
    from data.tasks import load_choice_task

    if t.downstream_interval and not t.downstream_tasks:
        raise ConfigError(
            f"trainer.downstream_interval={t.downstream_interval} but trainer.downstream_tasks is empty; "
            "name task files, e.g. trainer.downstream_tasks=[tests/infer/tasks/python_mc.yaml]"
        )
    for i, path in enumerate(t.downstream_tasks if t.downstream_interval else []):
        try:
            load_choice_task(path)
        except ConfigError as err:
            raise ConfigError(f"trainer.downstream_tasks[{i}]: {err}") from None


def validate_run_config(cfg: RunConfig, world_size: int) -> None:
    """Raises ConfigError on the first value that cannot run at this world size."""
    check_choices(cfg)  # a RunConfig built in Python has not been through OmegaConf's Enum check
    trainer, optim, parallel, ckpt = cfg.trainer, cfg.optim, cfg.parallel, cfg.checkpoint
    for key, value in (
        ("trainer.max_steps", trainer.max_steps),
        ("trainer.seq_len", trainer.seq_len),
        ("trainer.micro_batch", trainer.micro_batch),
        ("trainer.global_batch_tokens", trainer.global_batch_tokens),
        ("trainer.log_interval", trainer.log_interval),
        ("trainer.eval_batches", trainer.eval_batches),
        ("trainer.spike_window", trainer.spike_window),
        ("trainer.diag_sequences", trainer.diag_sequences),
        ("optim.lr", optim.lr),
        ("optim.eps", optim.eps),
        ("checkpoint.keep_last", ckpt.keep_last),
    ):
        _positive(key, value)
    for key, value in (
        ("trainer.grad_clip", trainer.grad_clip),
        ("trainer.eval_interval", trainer.eval_interval),
        ("trainer.diag_interval", trainer.diag_interval),
        ("trainer.downstream_interval", trainer.downstream_interval),
        ("trainer.peak_tflops", trainer.peak_tflops),
        ("optim.warmup_steps", optim.warmup_steps),
        ("optim.weight_decay", optim.weight_decay),
        ("checkpoint.interval", ckpt.interval),
    ):
        _positive(key, value, allow_zero=True)
    for key, value in (("optim.beta1", optim.beta1), ("optim.beta2", optim.beta2)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{key}={value} must lie in [0, 1) (an AdamW moment decay)")
    if str(optim.fused).lower() not in list(Fused):
        raise ConfigError(f"optim.fused={optim.fused!r} is not one of {[f.value for f in Fused]}")
    _spike_settings(trainer)
    _downstream_settings(trainer)
    if parallel.activation_checkpointing == "every_k":
        _positive("parallel.ac_every", parallel.ac_every)
    if not 0.0 <= optim.min_lr_ratio <= 1.0:
        raise ConfigError(f"optim.min_lr_ratio={optim.min_lr_ratio} must lie in [0, 1]")
    if not 0.0 < optim.decay_fraction <= 1.0:
        raise ConfigError(f"optim.decay_fraction={optim.decay_fraction} must lie in (0, 1]")
    if optim.warmup_steps >= trainer.max_steps and optim.schedule != "constant":
        raise ConfigError(
            f"optim.warmup_steps={optim.warmup_steps} must be < trainer.max_steps={trainer.max_steps} for "
            f"schedule {str(optim.schedule)!r}"
        )
    if trainer.seq_len > cfg.model.max_seq_len:
        raise ConfigError(
            f"trainer.seq_len={trainer.seq_len} exceeds model.max_seq_len={cfg.model.max_seq_len}"
        )
    dims = resolve_dims(parallel, world_size)
    check_tp_fits_model(dims, cfg.model)
    if trainer.seq_len % dims.tp:  # sequence parallel splits every window's positions over the TP ranks
        raise ConfigError(f"parallel.tp={dims.tp} must divide trainer.seq_len={trainer.seq_len}")
    grad_accum_steps(cfg, dims.dp_size)
