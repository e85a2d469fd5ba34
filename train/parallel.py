"""Process group, device mesh and model parallelisation: the only place that knows how ranks share a model.

The model package stays free of torch.distributed; here it is built on the meta device, wrapped
(activation checkpointing, torch.compile, FSDP2 / DDP), then materialised and initialised on the device.
"""

from __future__ import annotations

import contextlib
import gc
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.rendezvous import rendezvous
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel
from torch.nn.parallel import DistributedDataParallel

from model import ModelConfig, Transformer
from train.activation_checkpointing import apply_activation_checkpointing
from train.config import ParallelConfig
from train.degrees import DIM_NAMES, ParallelDims, resolve_dims
from train.expert_parallel import apply_expert_parallel, expert_modules, scale_expert_grads
from train.tensor_parallel import apply_tensor_parallel, sum_tp_partial_grads


@dataclass
class DistInfo:
    """Where this process sits in the job and what it computes on."""

    rank: int
    world_size: int
    device: torch.device
    dims: ParallelDims
    mesh: DeviceMesh
    """The job's one mesh, dims (dp_replicate, dp_shard, tp); every part that cares about ranks asks it."""
    expert_mesh: DeviceMesh | None = None
    """With expert parallel, the same mesh with dp_shard split into (dp_shard_mod_ep, ep), ep innermost
    (train/expert_parallel.py); None without."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dp_rank(self) -> int:
        """This rank's data-parallel index: the loaders read by it, so one TP group shares its batches."""
        return self.mesh.get_local_rank("dp_replicate") * self.dims.dp_shard + self.mesh.get_local_rank(
            "dp_shard"
        )

    def ep_mesh(self) -> DeviceMesh:
        """The ranks that split the experts: ep adjacent ranks of one dp_shard group."""
        return self._expert_mesh()["ep"]

    def expert_dp_mesh(self) -> DeviceMesh:
        """The ranks holding the same experts, which FSDP shards them over: the dp_shard_mod_ep ranks at this
        ep index, and (HSDP, 2-D) the dp_replicate replicas."""
        if self.dims.dp_replicate > 1:
            return self._expert_mesh()["dp_replicate", "dp_shard_mod_ep"]
        return self._expert_mesh()["dp_shard_mod_ep"]

    def _expert_mesh(self) -> DeviceMesh:
        if self.expert_mesh is None:
            raise RuntimeError(f"no expert mesh: parallel.ep={self.dims.ep} (expert parallel needs ep > 1)")
        return self.expert_mesh

    @property
    def dp_size(self) -> int:
        return self.dims.dp_size

    def dp_mesh(self) -> DeviceMesh:
        """What FSDP shards over: 1-D dp_shard, or 2-D (dp_replicate, dp_shard) for HSDP."""
        if self.dims.dp_replicate > 1:
            return self.mesh["dp_replicate", "dp_shard"]
        return self.mesh["dp_shard"]


def resolve_device(device: str, local_rank: int) -> torch.device:
    """auto: this rank's CUDA device when CUDA is present, else the CPU."""
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("trainer.device='cuda' but torch.cuda.is_available() is False")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(pcfg: ParallelConfig, device_pref: str) -> DistInfo:
    """Joins torchrun's process group, or makes a 1-rank gloo group so one code path (DCP too) serves all."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(device_pref, local_rank)
    backend = pcfg.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    # CPU tensors (checkpoint metadata, flags) keep a gloo path even when the device path is NCCL.
    pg_backend = "cpu:gloo,cuda:nccl" if backend == "nccl" else "gloo"
    if not dist.is_initialized():
        timeout = timedelta(minutes=10)
        if "RANK" in os.environ:
            # torchrun's store outlives a worker restart and still holds the dead attempt's gloo addresses;
            # keys under a per-attempt prefix keep a restarted group from dialling them.
            store, _, _ = next(rendezvous("env://", timeout=timeout))
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            dist.init_process_group(
                backend=pg_backend,
                store=dist.PrefixStore(f"diffv2/attempt_{attempt}", store),
                rank=rank,
                world_size=world_size,
                timeout=timeout,
                device_id=_device_id(device),
            )
        else:
            dist.init_process_group(
                backend=pg_backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout
            )
    dims = resolve_dims(pcfg, world_size)
    shape = (dims.dp_replicate, dims.dp_shard, dims.tp)
    mesh = init_device_mesh(device.type, shape, mesh_dim_names=DIM_NAMES)
    expert_mesh = None
    if dims.ep > 1:
        # A view of the same ranks (one root mesh, as FSDP needs to combine the ep and expert dp dims).
        expert_mesh = mesh._unflatten(1, (dims.dp_shard // dims.ep, dims.ep), ("dp_shard_mod_ep", "ep"))
    return DistInfo(rank, world_size, device, dims, mesh, expert_mesh)


def _device_id(device: torch.device) -> torch.device | None:
    return device if device.type == "cuda" else None


def from_rank0(value: Any, info: DistInfo) -> Any:
    """Rank 0's value (any picklable object) on every rank; the other ranks' values are ignored."""
    box = [value if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown_distributed() -> None:
    """Destroys the process groups, then collects what still points at them (DTensors, meshes) while the
    interpreter is whole. Left to interpreter exit, that C++ state was torn down in no set order and a rank
    sometimes aborted after finishing ("terminate called without an active exception": 2 in 32 resumed
    2-rank gloo runs)."""
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


def param_dtype(pcfg: ParallelConfig, device: torch.device) -> torch.dtype:
    """Compute dtype of matmuls: bf16 on CUDA by default; on CPU fp32 unless bf16 is asked for."""
    if pcfg.mixed_precision == "bf16" or (pcfg.mixed_precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


@contextlib.contextmanager
def autocast(pcfg: ParallelConfig, info: DistInfo) -> Iterator[None]:
    """bf16 autocast without FSDP; FSDP casts parameters itself through its MixedPrecisionPolicy."""
    dtype = param_dtype(pcfg, info.device)
    if dtype == torch.float32 or info.dims.fsdp:
        yield
        return
    with torch.autocast(device_type=info.device.type, dtype=dtype):
        yield


def _apply_fsdp(model: Transformer, pcfg: ParallelConfig, info: DistInfo) -> None:
    dtype = param_dtype(pcfg, info.device)
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    dp_mesh = info.dp_mesh()
    for i, block in enumerate(model.layers):
        # The last block's parameters are needed again first in backward: keep them gathered.
        last = i == len(model.layers) - 1
        if info.dims.ep > 1:
            # Expert parallel split the experts over the ep ranks; FSDP shards them over the ranks that hold
            # the same ones (first, so the block's fully_shard leaves them to this one).
            for experts in expert_modules(block):
                fully_shard(experts, mesh=info.expert_dp_mesh(), mp_policy=mp, reshard_after_forward=not last)
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=not last)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp)


def _init_weights(model: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad(), warnings.catch_warnings():
        # DTensor's random ops warn on CPU meshes; sharded init is still a valid init (see parallel.init).
        warnings.simplefilter("ignore")
        model.init_weights()


def _broadcast_rank0_weights(model: nn.Module, cfg: ModelConfig, seed: int, info: DistInfo) -> None:
    """Rank 0 initialises the full model on its CPU exactly as one process would, then sends each rank its
    shards; the model is then identical at every world size (a 1-process run reproduces an FSDP run)."""
    full_sd: dict[str, torch.Tensor] = {}
    if info.is_main:
        with torch.device("meta"):
            full = Transformer(cfg)
        full.to_empty(device="cpu")
        _init_weights(full, seed)
        full_sd = full.state_dict()
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, full_sd, options=options)


def build_model(
    cfg: ModelConfig, pcfg: ParallelConfig, info: DistInfo, seed: int
) -> tuple[nn.Module, Transformer]:
    """Builds on meta, wraps, materialises on the device and initialises. Returns (wrapped model for the loop,
    the Transformer inside it for flops_per_token, diagnostics and export)."""
    dims = info.dims
    with torch.device("meta"):
        model = Transformer(cfg)
    # Order as torchtitan: TP first (parameters become DTensors on the tp dim), then AC and compile around
    # the parallelised blocks, then FSDP over the data-parallel dims (2-D DTensors with TP).
    if dims.tp > 1:
        apply_tensor_parallel(model, info.mesh["tp"])
    if dims.ep > 1:
        apply_expert_parallel(model, info.ep_mesh())
    apply_activation_checkpointing(model.layers, pcfg)
    if pcfg.compile:
        for block in model.layers:
            block.compile()  # in place: parameter names (and so checkpoints) do not change
    if dims.fsdp:
        _apply_fsdp(model, pcfg, info)
    model.to_empty(device=info.device)
    _init_weights(model, seed)  # also fills non-persistent buffers (rotary tables) on every rank
    sharded = dims.fsdp or dims.tp > 1
    if sharded and pcfg.init == "rank0" and info.world_size > 1:
        _broadcast_rank0_weights(model, cfg, seed, info)
    if dims.ddp:
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        # DDP broadcasts rank 0's weights at construction; every rank also inits with the same seed.
        ddp_mesh = info.mesh["dp_replicate"]
        # No buffer broadcast before every forward: the buffers are equal on every rank by construction
        # (rotary tables; MoE biases move by an all-reduced load), and each rank's MoE load count is its own.
        ddp = DistributedDataParallel(
            model, device_ids=device_ids, device_mesh=ddp_mesh, broadcast_buffers=False
        )
        return ddp, model
    return model, model


def grad_sync(model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """Skips the gradient all-reduce / reduce-scatter on all but the last micro-step of an accumulation."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()
    if isinstance(model, DistributedDataParallel) and not enabled:
        return model.no_sync()
    return contextlib.nullcontext()


def loss_context(info: DistInfo) -> contextlib.AbstractContextManager:
    """Around a micro-step's forward and backward: with TP the loss is taken on vocab-sharded logits."""
    return loss_parallel() if info.dims.tp > 1 else contextlib.nullcontext()


def grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all `grads` together, each element counted once, on every rank (see finish_gradients)."""
    groups: dict[object, list[torch.Tensor]] = {}
    for grad in grads:
        groups.setdefault(grad.device_mesh if isinstance(grad, DTensor) else None, []).append(grad)
    norms = []
    for group in groups.values():
        norm = torch.nn.utils.get_total_norm(group)
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    return torch.linalg.vector_norm(torch.stack(norms)) if len(norms) > 1 else norms[0]


def finish_gradients(model: nn.Module, info: DistInfo, max_norm: float) -> float:
    """After the last micro-step's backward: completes TP-partial gradients, then clips all gradients to
    `max_norm` (inf: none) by their global norm, which it returns.

    Gradients can be DTensors on different meshes (TP on tp, FSDP on dp, 2-D on both) or plain tensors; the
    norm of each mesh's group is taken by torch and made whole (`full_tensor`, one all-reduce per group), so
    the result is the norm of the full model's gradient at any layout."""
    if info.dims.tp > 1:
        sum_tp_partial_grads(model, info.mesh["tp"])
    if info.dims.ep > 1:
        scale_expert_grads(model, info.dims.ep)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    total = grad_norm(grads)
    # as torch.nn.utils.clip_grads_with_norm_: grads scaled by min(1, max_norm / (norm + 1e-6))
    coef = (max_norm / (total + 1e-6)).item()
    if coef < 1.0:
        for grad in grads:
            grad.mul_(coef)
    return total.item()
