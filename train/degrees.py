"""The parallel layout as numbers: degrees resolved against the world size, and the model shapes TP needs.

No torch here: the launcher and `conf` check a layout before any process starts. train/parallel.py turns
the resolved degrees into one DeviceMesh with dims (dp_replicate, dp_shard, tp), outermost first, so the TP
ranks of one group are adjacent (one node) and data-parallel traffic crosses nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from errors import ConfigError
from model.config import ModelConfig, baseline_heads
from train.config import ParallelConfig

DIM_NAMES = ("dp_replicate", "dp_shard", "tp")
"""The mesh's dims, outermost first; room is left for ep / cp / pp as further dims."""


@dataclass(frozen=True)
class ParallelDims:
    """Resolved degrees (no -1 left): dp_replicate * dp_shard * tp == world_size."""

    dp_replicate: int
    dp_shard: int
    tp: int
    ep: int = 1
    """Expert parallel, borrowed from dp_shard (not a factor of the world size): ep ranks of one dp_shard
    group split each MoE layer's experts and exchange tokens; they still read different batches."""

    @property
    def world_size(self) -> int:
        return self.dp_replicate * self.dp_shard * self.tp

    @property
    def dp_size(self) -> int:
        """Ranks that see different batches; the ranks of one TP group share a batch."""
        return self.dp_replicate * self.dp_shard

    @property
    def fsdp(self) -> bool:
        """Parameters are wrapped by FSDP2 (sharded, or HSDP; also a replicate-only layout with TP)."""
        return self.dp_shard > 1 or (self.dp_replicate > 1 and self.tp > 1)

    @property
    def ddp(self) -> bool:
        """Plain replicas: DistributedDataParallel."""
        return self.dp_replicate > 1 and not self.fsdp

    def describe(self) -> str:
        """e.g. 'fsdp 2 x tp 2', 'ddp 4', 'hsdp 2 x 4', 'single'."""
        parts = []
        if self.dp_replicate > 1 and self.dp_shard > 1:
            parts.append(f"hsdp {self.dp_replicate} x {self.dp_shard}")
        elif self.dp_shard > 1:
            parts.append(f"fsdp {self.dp_shard}")
        elif self.dp_replicate > 1:
            parts.append(f"{'hsdp' if self.fsdp else 'ddp'} {self.dp_replicate}")
        if self.tp > 1:
            parts.append(f"tp {self.tp}")
        if self.ep > 1:
            parts.append(f"ep {self.ep}")
        return " x ".join(parts) or "single"


def resolve_dims(pcfg: ParallelConfig, world_size: int) -> ParallelDims:
    """The degrees with -1 filled in from the world size; ConfigError naming the fields when they cannot
    multiply to it."""
    given = {"dp_replicate": pcfg.dp_replicate, "dp_shard": pcfg.dp_shard, "tp": pcfg.tp}
    for name, value in given.items():
        if value == 0 or value < -1:
            raise ConfigError(f"parallel.{name}={value} must be a positive degree, or -1 (what remains)")
    if given["tp"] == -1:
        raise ConfigError("parallel.tp=-1: the tensor-parallel degree must be given (e.g. 8 GPUs of a node)")
    open_dims = [name for name, value in given.items() if value == -1]
    if len(open_dims) > 1:
        raise ConfigError(
            f"parallel.{open_dims[0]}=-1 and parallel.{open_dims[1]}=-1: at most one degree can be 'what "
            "remains'; set one of them"
        )
    fixed = 1
    for value in given.values():
        fixed *= value if value > 0 else 1
    product = " * ".join(f"parallel.{name}={value}" for name, value in given.items())
    if open_dims:
        if world_size % fixed:
            raise ConfigError(f"{product}: the fixed degrees ({fixed}) must divide world_size={world_size}")
        given[open_dims[0]] = world_size // fixed
    elif fixed != world_size:
        raise ConfigError(
            f"{product} = {fixed} ranks, but world_size={world_size}; the degrees must multiply to the "
            "number of processes (set one to -1 to take what remains, e.g. parallel=fsdp)"
        )
    if pcfg.ep < 1:
        raise ConfigError(f"parallel.ep={pcfg.ep} must be a positive degree (1: no expert parallel)")
    return ParallelDims(**given, ep=pcfg.ep)


def check_ep_fits_model(dims: ParallelDims, model: ModelConfig) -> None:
    """Expert parallel splits the routed experts over ep of the dp_shard ranks (train/expert_parallel.py);
    the layouts it cannot run are refused by name rather than run wrong."""
    if dims.ep == 1:
        return
    if not model.moe_experts:
        raise ConfigError(
            f"parallel.ep={dims.ep} needs an MoE model (model.moe_experts > 0, e.g. model=micro_moe); got "
            "model.moe_experts=0: set parallel.ep=1"
        )
    if model.moe_experts % dims.ep:
        raise ConfigError(
            f"parallel.ep={dims.ep} must divide model.moe_experts={model.moe_experts} (each rank holds "
            "moe_experts / ep whole experts)"
        )
    if dims.dp_shard % dims.ep:
        raise ConfigError(
            f"parallel.ep={dims.ep} must divide parallel.dp_shard={dims.dp_shard}: the experts are split "
            "over ep ranks of one FSDP group and FSDP-sharded over the dp_shard / ep groups (and the "
            "dp_replicate replicas); pick an ep that divides dp_shard"
        )


def tp_units(model: ModelConfig) -> tuple[int, str]:
    """How many indivisible head units TP splits for this variant, and what they are (for errors).

    A unit is one K/V group with every query head that reads it: for DIFF V2 that keeps each differential pair
    (2j, 2j+1) with its K/V head; DIFF V1's keys are sub-head pairs and its values 2d wide, so a unit is two
    key sub-heads and one value; the baseline's unit is one K/V head and its query heads."""
    if model.attention == "diff_v1":
        return model.n_kv_heads // 2, "model.n_kv_heads / 2 (DIFF V1's values of width 2d)"
    return model.n_kv_heads, "model.n_kv_heads"


def check_tp_fits_model(dims: ParallelDims, model: ModelConfig) -> None:
    """The DIFF rule: each differential head pair and the K/V heads of its GQA group live on one TP rank.

    With contiguous column sharding that holds exactly when tp divides the K/V units. Other cases are
    refused rather than replicating K/V heads as Megatron does: replicated K/V would need the model to
    know which copy it holds, and raising model.n_kv_heads (or lowering tp) is the usual fix."""
    if dims.tp == 1:
        return
    units, what = tp_units(model)
    if units % dims.tp:
        raise ConfigError(
            f"parallel.tp={dims.tp} must divide {what}={units} (model.n_kv_heads={model.n_kv_heads}): every "
            "differential pair and its K/V heads must stay on one TP rank; raise model.n_kv_heads or lower "
            "parallel.tp (K/V replication is not supported)"
        )
    if model.attention == "diff_v2" and model.pairing == "cross_group":
        raise ConfigError(
            "model.pairing='cross_group' pairs heads j and h + j from different K/V groups, which contiguous "
            f"TP sharding puts on different ranks; use parallel.tp=1 (got {dims.tp}) for this ablation"
        )
    heads = baseline_heads(model) if model.attention == "baseline" else model.n_heads
    if model.ffn_hidden % dims.tp:
        raise ConfigError(f"parallel.tp={dims.tp} must divide model.ffn_hidden={model.ffn_hidden}")
    if heads % dims.tp:  # implied by the K/V check (h_kv divides h); kept for a clear message
        raise ConfigError(f"parallel.tp={dims.tp} must divide the {heads} attention heads")
    if model.tie_embeddings:
        raise ConfigError(
            "model.tie_embeddings=true with parallel.tp > 1: the tied head would need the embedding sharded "
            "two ways; set model.tie_embeddings=false"
        )
