"""One training step of the real model and the real data-parallel layout, traced on fake tensors.

Nothing is allocated: the model is built as `python -m train` builds it (train.parallel: activation
checkpointing, FSDP2 `fully_shard` on the mesh `init_distributed` makes) inside torch's FakeTensorMode,
under a fake process group of the target world size (torch.testing's FakeStore + backend "fake": every
collective returns at once, with the right shapes). Two optimizer steps run as the loop runs them
(`grad_sync`, `autocast`, `lm_loss`, AdamW from train.optim); torch's FSDPMemTracker / MemTracker count
every storage by what it holds (parameters, gradients, optimizer state, activations, backward temporaries)
and keep the peak. The second step is the steady one: the first has no optimizer state yet.

Written by hand, because those tools lack it:
- DDP: DistributedDataParallel's C++ reducer cannot take fake tensors, and a model built on the meta device
  cannot be materialised under FakeTensorMode without FSDP (swap_tensors refuses a fake parameter); so plain
  and DDP models are built directly on the fake device, and DDP's gradient buckets (one flat fp32 copy of
  the gradients, `gradient_as_bucket_view=False`) are added to the gradients.
- The logits / loss buffers: the peak of the LM head + loss (model/loss.py, whole or fused in chunks) traced
  alone on one micro-batch of hidden states, less the gradients it returns.
- torch.compile is not traced (planned as eager); compiled blocks fuse elementwise ops and usually need less.

Tensor and expert parallel: the degrees live in parallel.*, so the meshes `init_distributed` builds and the TP
plan and expert dispatch `build_model` applies reach the trace unchanged (the loss under `loss_context`, the
norm by `grad_norm`, as the loop takes them); the micro-batch arithmetic counts data-parallel ranks. The MoE's
routing has no values on fake tensors: expert dispatch takes it as even (train/expert_parallel.py); a CPU
(fp32) plan answers the experts' grouped matmuls by their shapes (grouped_mm.py); a capacity limit is planned
as dropless, its upper bound. Not traced: TP without
FSDP when the model has plain (unsharded) parameters (DIFF V1's lambdas, an MoE), which cannot be
materialised under FakeTensorMode (see DDP above).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed._tools.mem_tracker import MemTracker
from torch.distributed.device_mesh import DeviceMesh
from torch.testing._internal.distributed.fake_pg import FakeStore

from conf import RunConfig
from model import Transformer
from model.loss import lm_cross_entropy
from train.activation_checkpointing import apply_activation_checkpointing
from train.config import ParallelConfig, grad_accum_steps
from train.loop import lm_loss
from train.optim import build_optimizer
from train.parallel import (
    DistInfo,
    autocast,
    build_model,
    grad_norm,
    grad_sync,
    init_distributed,
    loss_context,
    param_dtype,
)
from train.plan.grouped_mm import AnyDtypeGroupedMM


@dataclass
class MemoryBreakdown:
    """Bytes on one rank (rank 0; data-parallel ranks are alike)."""

    params: int
    """Parameters held between steps (FSDP: this rank's shards)."""
    grads: int
    """Gradients after the backward (FSDP: sharded; DDP: plus its buckets)."""
    optimizer: int
    """AdamW's two moments (and step counters)."""
    activations: int
    """Activations alive at the peak (at the chosen activation checkpointing)."""
    temporaries: int
    """Backward temporaries and FSDP's gathered parameters and gradients alive at the peak."""
    loss_buffers: int
    """Peak of the LM head + loss of one micro-batch alone (logits, their fp32 copy and gradient)."""
    peak: int
    """The step's peak of everything above together, as traced."""
    params_per_rank: int
    """Parameter elements this rank holds."""


@contextlib.contextmanager
def fake_process_group(world_size: int) -> Iterator[None]:
    """A fake process group of `world_size` ranks with this process as rank 0, as torchrun's environment
    describes it (so train.parallel.init_distributed builds the job's real mesh over it)."""
    saved = {key: os.environ.get(key) for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    os.environ.update(RANK="0", WORLD_SIZE=str(world_size), LOCAL_RANK="0")
    dist.init_process_group("fake", rank=0, world_size=world_size, store=FakeStore())
    try:
        yield
    finally:
        dist.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _meshes_stay_real() -> Iterator[None]:
    """fully_shard builds the 2-D (dp, tp or ep) mesh of a DTensor parameter itself
    (`DeviceMesh._concatenate`), here inside FakeTensorMode, where the mesh's rank tensor would turn fake and
    its layout checks fail; the mesh is made outside fake mode instead, as every other mesh of the job is."""
    concatenate = DeviceMesh._concatenate

    def real_concatenate(meshes: list[DeviceMesh]) -> DeviceMesh:
        with unset_fake_temporarily():
            return concatenate(meshes)

    DeviceMesh._concatenate = staticmethod(real_concatenate)
    try:
        yield
    finally:
        DeviceMesh._concatenate = staticmethod(concatenate)


def planned_parallel(pcfg: ParallelConfig, gpu: bool) -> ParallelConfig:
    """The parallel section as traced: on a GPU target `auto` precision means bf16; no compile (see above);
    sharded init (rank 0's full host copy at start-up is host memory, not the device's)."""
    precision = "bf16" if gpu and pcfg.mixed_precision == "auto" else pcfg.mixed_precision
    return dataclasses.replace(pcfg, mixed_precision=precision, compile=False, init="sharded")


def _build(cfg: RunConfig, pcfg: ParallelConfig, info: DistInfo) -> torch.nn.Module:
    if info.dims.fsdp or info.dims.tp > 1:
        return build_model(cfg.model, pcfg, info, cfg.run.seed)[0]
    model = Transformer(cfg.model)  # on the fake CPU device, see above
    apply_activation_checkpointing(model.layers, pcfg)
    return model


def _bytes(snapshot: dict, *names: str) -> int:
    return sum(v for k, v in snapshot.items() if str(getattr(k, "value", k)) in names)


def trace_memory(cfg: RunConfig, world_size: int, gpu: bool) -> MemoryBreakdown:
    """Traces two training steps of `cfg` at `world_size` ranks; see the module docstring."""
    pcfg = planned_parallel(cfg.parallel, gpu)
    # A capacity limit picks its slots by value (nonzero), which fake tensors cannot shape; dropless routing
    # sends every slot to an expert, so its plan bounds any capacity's from above.
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, moe_capacity_factor=0.0))
    trainer = cfg.trainer
    with fake_process_group(world_size):
        info = init_distributed(pcfg, "cpu")
        accum = grad_accum_steps(cfg.trainer, info.dims.dp_size)
        with FakeTensorMode(), _meshes_stay_real(), AnyDtypeGroupedMM():
            model = _build(cfg, pcfg, info)
            optimizer = build_optimizer(model, cfg.optim, info.device)
            tokens = torch.randint(0, cfg.model.vocab_size, (trainer.micro_batch, trainer.seq_len))
            if info.dims.fsdp:
                tracker: MemTracker = FSDPMemTracker(mod=model, optm=optimizer)
                tracker.track_inputs((tokens,))
            else:
                tracker = MemTracker()
                tracker.track_external(model, optimizer)
            with tracker:
                for _ in range(2):
                    # Two micro-steps stand for any accumulation: the second holds the first's gradients.
                    micro_steps = min(accum, 2)
                    for micro in range(micro_steps):
                        with grad_sync(model, micro == micro_steps - 1), loss_context(info):
                            with autocast(pcfg, info):
                                loss, aux = lm_loss(model, tokens, tokens)
                            (loss if aux is None else loss + aux).backward()
                        tracker.reset_mod_stats()  # per-module stats only; the peak is kept
                    # The loop's clipping norm (gradients on several meshes with TP or EP); the scaling that
                    # follows is in place and has no value to read here.
                    grad_norm([p.grad for p in model.parameters() if p.grad is not None])
                    optimizer.step()
                    steady = tracker.get_tracker_snapshot("current")[info.device]
                    optimizer.zero_grad(set_to_none=True)
            peak = tracker.get_tracker_snapshot("peak")[info.device]
            loss_buffers = _trace_loss(cfg, param_dtype(pcfg, info.device))
            local = sum(
                p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters()
            )
    grads = _bytes(steady, "Gradient", "Sharded Grad")
    buckets = grads if info.dims.ddp else 0
    return MemoryBreakdown(
        params=_bytes(steady, "Parameter", "Sharded Param", "Buffer"),
        grads=grads + buckets,
        optimizer=_bytes(steady, "Optstate", "OptState"),
        activations=_bytes(peak, "Activation"),
        temporaries=_bytes(peak, "Temp", "Unsharded Param", "Unsharded Grad", "All Gather", "Reduce Scatter"),
        loss_buffers=loss_buffers,
        peak=peak["Total"] + buckets,
        params_per_rank=local,
    )


def _trace_loss(cfg: RunConfig, dtype: torch.dtype) -> int:
    """Peak bytes of the LM head + loss of one micro-batch, beyond the gradients it returns."""
    m, t = cfg.model, cfg.trainer
    # Loss parallel: a TP rank holds every token's logits over its vocab shard (the head gathers the tokens).
    vocab = m.vocab_size // cfg.parallel.tp
    hidden = torch.randn(t.micro_batch, t.seq_len, m.d_model, dtype=dtype, requires_grad=True)
    weight = torch.randn(vocab, m.d_model, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, vocab, (t.micro_batch, t.seq_len))
    tracker = MemTracker()
    with tracker:
        lm_cross_entropy(hidden, weight, targets, m.loss_chunk_tokens).backward()
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    returned = hidden.numel() * hidden.element_size() + weight.numel() * weight.element_size()
    return max(peak - returned, 0)
