"""Value checks the schema cannot express (choices, divisibility), each naming the offending field.

Hydra and the dataclass schema already reject unknown keys and wrong types; this module catches values that
are well-typed but meaningless, before any process group, model or dataset is touched.
"""

from __future__ import annotations

from train.config import RunConfig

PARALLEL_MODES = ("single", "ddp", "fsdp", "hsdp")
MIXED_PRECISION = ("auto", "bf16", "fp32")
AC_MODES = ("none", "full", "every_k")
BACKENDS = ("auto", "nccl", "gloo")
INIT_MODES = ("rank0", "sharded")
SCHEDULES = ("cosine", "wsd", "constant")
FUSED = ("auto", "true", "false")
DEVICES = ("auto", "cpu", "cuda")
WANDB_MODES = ("online", "offline", "disabled")
FAULTS = ("none", "crash", "nan")


class ConfigError(ValueError):
    """A config value that cannot run; the message names the key, the value and what was expected."""


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {list(allowed)}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}={value} must be {'>= 0' if allow_zero else '> 0'}")


def _spike_settings(t) -> None:
    """The spike detector's limits (train/spikes.py): a window to measure noise over, thresholds >= 0."""
    from train.spikes import MIN_HISTORY

    if t.spike_window < MIN_HISTORY:
        raise ConfigError(f"trainer.spike_window={t.spike_window} must be >= {MIN_HISTORY} steps")
    _positive("trainer.loss_spike_jump", t.loss_spike_jump, allow_zero=True)
    _positive("trainer.loss_spike_deviations", t.loss_spike_deviations, allow_zero=True)
    if t.grad_spike_factor < 1.0:
        raise ConfigError(
            f"trainer.grad_spike_factor={t.grad_spike_factor} must be >= 1 (a multiple of the median)"
        )


def grad_accum_steps(cfg: RunConfig, world_size: int) -> int:
    """Micro-steps per optimizer step so that one step sees exactly trainer.global_batch_tokens tokens."""
    t = cfg.trainer
    per_micro_step = t.seq_len * t.micro_batch * world_size
    if t.global_batch_tokens % per_micro_step:
        raise ConfigError(
            f"trainer.global_batch_tokens={t.global_batch_tokens} must be a multiple of trainer.seq_len * "
            f"trainer.micro_batch * world_size = {t.seq_len} * {t.micro_batch} * {world_size} = "
            f"{per_micro_step}"
        )
    return t.global_batch_tokens // per_micro_step


def validate_run_config(cfg: RunConfig, world_size: int) -> None:
    """Raises ConfigError on the first value that cannot run at this world size."""
    t, o, p, c = cfg.trainer, cfg.optim, cfg.parallel, cfg.checkpoint
    for key, value in (
        ("trainer.max_steps", t.max_steps),
        ("trainer.seq_len", t.seq_len),
        ("trainer.micro_batch", t.micro_batch),
        ("trainer.global_batch_tokens", t.global_batch_tokens),
        ("trainer.log_interval", t.log_interval),
        ("trainer.eval_batches", t.eval_batches),
        ("trainer.spike_window", t.spike_window),
        ("optim.lr", o.lr),
    ):
        _positive(key, value)
    for key, value in (
        ("trainer.grad_clip", t.grad_clip),
        ("trainer.eval_interval", t.eval_interval),
        ("trainer.diag_interval", t.diag_interval),
        ("trainer.peak_tflops", t.peak_tflops),
        ("optim.warmup_steps", o.warmup_steps),
        ("optim.weight_decay", o.weight_decay),
        ("checkpoint.interval", c.interval),
    ):
        _positive(key, value, allow_zero=True)
    _positive("checkpoint.keep_last", c.keep_last)
    _choice("parallel.mode", p.mode, PARALLEL_MODES)
    _choice("parallel.mixed_precision", p.mixed_precision, MIXED_PRECISION)
    _choice("parallel.activation_checkpointing", p.activation_checkpointing, AC_MODES)
    _choice("parallel.backend", p.backend, BACKENDS)
    _choice("parallel.init", p.init, INIT_MODES)
    _choice("optim.schedule", o.schedule, SCHEDULES)
    _choice("optim.fused", str(o.fused).lower(), FUSED)
    _choice("trainer.device", t.device, DEVICES)
    _choice("wandb.mode", cfg.wandb.mode, WANDB_MODES)
    _choice("trainer.fault", t.fault, FAULTS)
    _spike_settings(t)
    if p.activation_checkpointing == "every_k":
        _positive("parallel.ac_every", p.ac_every)
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        raise ConfigError(f"optim.min_lr_ratio={o.min_lr_ratio} must lie in [0, 1]")
    if not 0.0 < o.decay_fraction <= 1.0:
        raise ConfigError(f"optim.decay_fraction={o.decay_fraction} must lie in (0, 1]")
    if o.warmup_steps >= t.max_steps and o.schedule != "constant":
        raise ConfigError(
            f"optim.warmup_steps={o.warmup_steps} must be < trainer.max_steps={t.max_steps} for schedule "
            f"{o.schedule!r}"
        )
    if t.seq_len > cfg.model.max_seq_len:
        raise ConfigError(f"trainer.seq_len={t.seq_len} exceeds model.max_seq_len={cfg.model.max_seq_len}")
    if p.mode == "single" and world_size > 1:
        raise ConfigError(
            f"parallel.mode='single' runs one process, but world_size={world_size}; use ddp|fsdp"
        )
    if p.mode == "hsdp":
        _positive("parallel.replicate", p.replicate)
        if world_size % p.replicate:
            raise ConfigError(f"parallel.replicate={p.replicate} must divide world_size={world_size} (hsdp)")
    grad_accum_steps(cfg, world_size)
