"""train's sections of the run config: trainer, optim, parallel, checkpoint, wandb, debug.

conf.schema.RunConfig puts them beside the model, data and launch sections. A choice field is typed with the
StrEnum above it, so OmegaConf refuses any other value naming the allowed ones. No torch here: the schema is
read by processes (the launcher, data.prepare) that never train.

The value checks the schema cannot express (ranges, divisibility, batch arithmetic at a world size) are at
the bottom: conf calls `validate_train_config` with the sections it needs, before any process group, model
or dataset is touched; each check names the offending field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from errors import ConfigError
from model.config import ModelConfig

# The choice fields' allowed values; OmegaConf refuses any other value, naming these.
Device = StrEnum("Device", ["auto", "cpu", "cuda"])
Schedule = StrEnum("Schedule", ["cosine", "wsd", "constant"])
# optim.fused stays a str field: YAML and Hydra read `true`/`false` as booleans, which Enums refuse.
Fused = StrEnum("Fused", ["auto", "true", "false"])
MixedPrecision = StrEnum("MixedPrecision", ["auto", "bf16", "fp32"])
ActivationCheckpointing = StrEnum("ActivationCheckpointing", ["none", "full", "every_k", "selective"])
Backend = StrEnum("Backend", ["auto", "nccl", "gloo"])
ShardedInit = StrEnum("ShardedInit", ["rank0", "sharded"])
WandbMode = StrEnum("WandbMode", ["online", "offline", "disabled"])
# not "nan": Hydra's command line reads nan as a float
Fault = StrEnum("Fault", ["none", "crash", "nan_loss"])


@dataclass
class RunInfo:
    name: str = "${model.name}-${model.variant}"
    """Run name: names the run directory and the wandb run."""
    dir: str = "runs/${run.name}"
    """Run directory, shared by all ranks: config, metrics.jsonl, checkpoints, wandb files."""
    seed: int = 0
    """Seed of the model init, data order and dropout-free RNG streams."""
    overwrite: bool = False
    """A fresh start into a run dir that holds another run's checkpoints or metrics (or a resume from an
    older step than its newest checkpoint) is refused; true moves that output aside to
    <run.dir>/replaced/<UTC time>/ first (nothing is deleted)."""


@dataclass
class TrainerConfig:
    max_steps: int = 150
    """Optimizer steps to train for (defaults: 150 x 8192 tokens, ~5 minutes of model=tiny on 2 CPU cores)."""
    seq_len: int = 256
    """Tokens per training sequence."""
    global_batch_tokens: int = 8192
    """Tokens per optimizer step across all ranks; a multiple of seq_len * micro_batch * world."""
    micro_batch: int = 16
    """Sequences per rank per forward/backward; gradient accumulation makes up the rest."""
    grad_clip: float = 1.0
    """Max global gradient norm (0: no clipping)."""
    device: Device = Device.auto
    """auto (cuda when present, else cpu) | cpu | cuda."""
    log_interval: int = 10
    """Steps between metric lines."""
    eval_interval: int = 50
    """Steps between validation losses (0: only at the end)."""
    eval_batches: int = 8
    """Micro-batches per rank in one validation pass."""
    diag_interval: int = 50
    """Steps between DIFF diagnostics (lambda stats, activation maxima, context RMS, qk-logits, sink mass)."""
    diag_sequences: int = 8
    """Sequences of the step's last micro-batch (at most trainer.micro_batch) the attention diagnostics read:
    means over all of them, qk_logit_max the max over all. Cost: one more forward plus explicit softmax maps
    per sequence (model/diagnostics.py)."""
    downstream_tasks: list[str] = field(default_factory=list)
    """Multiple-choice task files (lm-eval-style YAML + JSONL, e.g. tests/infer/tasks/python_mc.yaml; paths
    relative to the working directory) scored during training (train/downstream.py); empty: none."""
    downstream_interval: int = 0
    """Steps between downstream scores (also scored at the last step); 0: off. Logged as
    downstream/<task>/acc and /acc_norm, beside val_loss."""
    loss_spike_jump: float = 0.03
    """A loss spike exceeds the loss's recent level (median of the last 5 steps) by more than this fraction
    of it, and by loss_spike_deviations robust stds; see train/spikes.py."""
    loss_spike_deviations: float = 6.0
    """A loss spike exceeds the recent level by more than this many robust stds of the per-step noise
    (1.4826 * MAD of the second differences over spike_window steps): small batches' noise does not count."""
    grad_spike_factor: float = 2.0
    """A grad-norm spike exceeds this multiple of the grad norm's recent level (median of the last 5)."""
    detect_anomaly_nan: bool = True
    """Stop on a NaN or inf loss (never checkpointed)."""
    peak_tflops: float = 0.0
    """Peak dense bf16 TFLOP/s of one device for MFU; 0: table (A100/H100/H200/B200), else no MFU."""
    spike_window: int = 100
    """Steps over which the per-step noise of the loss (for loss_spike_deviations) is measured; the level a
    spike is compared with is the median of the last 5 steps (train/spikes.py)."""
    stop_at_step: int = 0
    """Checkpoint and exit cleanly after this step, keeping max_steps' LR schedule (0: run to max_steps); a
    later job with checkpoint.resume=auto continues. For time-sliced jobs and tests."""


@dataclass
class OptimConfig:
    lr: float = 1e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of lr (cosine, wsd)."""
    schedule: Schedule = Schedule.cosine
    """cosine (warmup + cosine) | wsd (warmup-stable-decay) | constant (after warmup)."""
    warmup_steps: int = 20
    """Linear warmup steps."""
    decay_fraction: float = 0.2
    """wsd: fraction of max_steps spent in the final decay."""
    weight_decay: float = 0.1
    """AdamW weight decay; not applied to norms, biases, embeddings or lambda parameters."""
    beta1: float = 0.9
    """AdamW first-moment decay."""
    beta2: float = 0.95
    """AdamW second-moment decay."""
    eps: float = 1e-8
    """AdamW denominator epsilon."""
    fused: str = Fused.auto.value
    """auto (fused AdamW on CUDA) | true | false (see Fused)."""


@dataclass
class ParallelConfig:
    """The layout as degrees of parallelism; their product is the world size (train/degrees.py). The presets
    conf/parallel/{single,ddp,fsdp,hsdp}.yaml name common choices of them."""

    dp_replicate: int = 1
    """Data-parallel replicas (full copies, or HSDP's replicate groups); -1: what remains of the world."""
    dp_shard: int = 1
    """Ranks FSDP2 shards parameters, gradients and optimizer state over (1: no FSDP); -1: what remains."""
    tp: int = 1
    """Tensor-parallel degree: heads and FFN columns split over this many ranks of one node, with
    sequence-parallel norms and a vocab-sharded loss (train/tensor_parallel.py); an MoE feed-forward stays
    whole, each rank routing its own sequence shard. Must divide model.n_kv_heads (DIFF V1: n_kv_heads / 2) so
    every differential pair and its K/V heads sit on one rank."""
    ep: int = 1
    """Expert-parallel degree: each MoE layer's routed experts split over this many ranks, tokens exchanged
    by all-to-all (train/expert_parallel.py). Borrowed from the data-parallel ranks (they still see different
    batches): must divide parallel.dp_shard (the experts are FSDP-sharded over the dp_shard / ep ranks that
    hold the same ones, and replicated over dp_replicate) and model.moe_experts."""
    mixed_precision: MixedPrecision = MixedPrecision.auto
    """auto (bf16 params + fp32 reduce on CUDA, fp32 on CPU) | bf16 | fp32."""
    activation_checkpointing: ActivationCheckpointing = ActivationCheckpointing.none
    """none | full (every block recomputed in the backward) | every_k (one block in ac_every) | selective
    (every block keeps its matmul and attention outputs and recomputes only the elementwise ops between
    them: train/activation_checkpointing.py)."""
    ac_every: int = 2
    """every_k: checkpoint one block in this many."""
    compile: bool = False
    """torch.compile each block."""
    backend: Backend = Backend.auto
    """auto (nccl on CUDA, gloo on CPU) | nccl | gloo."""
    init: ShardedInit = ShardedInit.rank0
    """Weight init of a sharded model (FSDP or TP): rank0 (rank 0 builds the full model on its CPU and sends
    each rank its shards: weights equal at any layout) | sharded (each rank initialises its own shards: no
    full copy anywhere, but the weights depend on the layout)."""


@dataclass
class CheckpointConfig:
    enabled: bool = True
    """false: write no checkpoint at all, not even at the end or on a stop signal (benchmarks, smoke runs);
    resuming from an existing one still works."""
    interval: int = 50
    """Steps between checkpoints (0: only at the end)."""
    keep_last: int = 2
    """Complete checkpoints kept; older ones are deleted."""
    resume: str = "auto"
    """auto (latest complete checkpoint in run.dir) | none | a checkpoint path."""
    verify: bool = True
    """Check the sha256 of every checkpoint file (written at save) before loading it; false loads a
    checkpoint without checksums.json (older ones) unverified."""
    fallback: bool = False
    """resume=auto: when the latest checkpoint fails verification, rename it step_X.corrupt and resume from
    the previous complete one (false: stop, naming the corrupt file)."""
    async_save: bool = False
    """Save in the background on its own gloo process group."""
    export_safetensors: bool = True
    """At the end, export the model to one safetensors file plus its config."""


@dataclass
class WandbConfig:
    mode: WandbMode = WandbMode.offline
    """online | offline | disabled."""
    project: str = "diffv2"
    """wandb project."""
    entity: str | None = None
    """wandb entity (team or user); None: the logged-in user's default."""
    group: str | None = None
    """Runs of one sweep share a group."""
    tags: list[str] = field(default_factory=list)
    """wandb tags."""
    name: str | None = None
    """Defaults to run.name."""


@dataclass
class DebugConfig:
    """Test hooks that break a run on purpose, so the tests can prove recovery; a real run leaves them off."""

    fault: Fault = Fault.none
    """none | crash (fault_rank exits hard: train.debug.EXIT_INJECTED_CRASH) | nan_loss (the loss becomes
    NaN), at fault_step."""
    fault_step: int = 0
    """The step (1-based) at which the fault fires; a crash fires on torchrun attempt 0 only."""
    fault_rank: int = 0
    """The rank that crashes."""


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


def grad_accum_steps(trainer: TrainerConfig, dp_size: int) -> int:
    """Micro-steps per optimizer step so that one step sees exactly trainer.global_batch_tokens tokens; the
    ranks of one TP group share their batches, so only the data-parallel size counts."""
    t = trainer
    per_micro_step = t.seq_len * t.micro_batch * dp_size
    if t.global_batch_tokens % per_micro_step:
        raise ConfigError(
            f"trainer.global_batch_tokens={t.global_batch_tokens} must be a multiple of trainer.seq_len * "
            f"trainer.micro_batch * data-parallel size = {t.seq_len} * {t.micro_batch} * {dp_size} = "
            f"{per_micro_step}"
        )
    return t.global_batch_tokens // per_micro_step


def _optim_settings(optim: OptimConfig, max_steps: int) -> None:
    for key, value in (("optim.beta1", optim.beta1), ("optim.beta2", optim.beta2)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{key}={value} must lie in [0, 1) (an AdamW moment decay)")
    if str(optim.fused).lower() not in list(Fused):
        raise ConfigError(f"optim.fused={optim.fused!r} is not one of {[f.value for f in Fused]}")
    if not 0.0 <= optim.min_lr_ratio <= 1.0:
        raise ConfigError(f"optim.min_lr_ratio={optim.min_lr_ratio} must lie in [0, 1]")
    if not 0.0 < optim.decay_fraction <= 1.0:
        raise ConfigError(f"optim.decay_fraction={optim.decay_fraction} must lie in (0, 1]")
    if optim.warmup_steps >= max_steps and optim.schedule != "constant":
        raise ConfigError(
            f"optim.warmup_steps={optim.warmup_steps} must be < trainer.max_steps={max_steps} for "
            f"schedule {str(optim.schedule)!r}"
        )


def _parallel_settings(parallel: ParallelConfig, model: ModelConfig, seq_len: int, world_size: int) -> int:
    """The layout's degrees against the world size and the model's heads (train/degrees.py); returns the
    data-parallel size."""
    from train.degrees import (  # it reads this module's ParallelConfig
        check_ep_fits_model,
        check_tp_fits_model,
        resolve_dims,
    )

    if parallel.activation_checkpointing == "every_k":
        _positive("parallel.ac_every", parallel.ac_every)
    dims = resolve_dims(parallel, world_size)
    check_tp_fits_model(dims, model)
    check_ep_fits_model(dims, model)
    if seq_len % dims.tp:  # sequence parallel splits every window's positions over the TP ranks
        raise ConfigError(f"parallel.tp={dims.tp} must divide trainer.seq_len={seq_len}")
    if dims.tp > 1 and model.moe_experts and (model.moe_aux_coef or model.moe_z_coef):
        # Under TP each rank routes its own sequence shard (train/tensor_parallel.py), so it would take these
        # batch means over its shard alone; refused until they are reduced over the TP group.
        raise ConfigError(
            f"model.moe_aux_coef={model.moe_aux_coef} / model.moe_z_coef={model.moe_z_coef} with "
            f"parallel.tp={dims.tp}: each TP rank routes its own sequence shard, and these losses would be "
            "taken over the shard; balance by the bias update alone (model.moe_bias_rate, the default) and "
            "set both coefficients to 0, or use parallel.tp=1"
        )
    return dims.dp_size


def validate_train_config(
    trainer: TrainerConfig,
    optim: OptimConfig,
    parallel: ParallelConfig,
    checkpoint: CheckpointConfig,
    model: ModelConfig,
    world_size: int,
) -> None:
    """Raises ConfigError on the first value of train's sections that cannot run at this world size with
    this model (its rotary table's length; its heads, which tensor parallelism splits)."""
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
        ("checkpoint.keep_last", checkpoint.keep_last),
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
        ("checkpoint.interval", checkpoint.interval),
    ):
        _positive(key, value, allow_zero=True)
    _optim_settings(optim, trainer.max_steps)
    _spike_settings(trainer)
    _downstream_settings(trainer)
    if trainer.seq_len > model.max_seq_len:
        raise ConfigError(f"trainer.seq_len={trainer.seq_len} exceeds model.max_seq_len={model.max_seq_len}")
    dp_size = _parallel_settings(parallel, model, trainer.seq_len, world_size)
    grad_accum_steps(trainer, dp_size)
