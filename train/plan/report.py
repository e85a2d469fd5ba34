"""A plan: the traced memory against the device, the step's FLOPs and time at an MFU, and what to change
when it does not fit (each candidate knob traced again, the one with the lowest peak named first)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from conf import RunConfig
from model import ModelConfig
from model.flops import flops_per_token
from train.degrees import resolve_dims
from train.plan.devices import GIB, DeviceSpec
from train.plan.trace import MemoryBreakdown, trace_memory

GPU_RESERVE_BYTES = 2 * GIB
"""Kept free on a GPU for what the trace cannot see: the CUDA context (~0.5 GiB), NCCL's buffers and the
caching allocator's fragmentation (an estimate; measured peaks sit below the tracer's by less than this)."""


@dataclass
class Plan:
    cfg: RunConfig
    world_size: int
    device: DeviceSpec
    memory: MemoryBreakdown
    mfu: float
    advice: list[tuple[str, int]] = field(default_factory=list)
    """(override, traced peak bytes) of the knobs tried when the run does not fit, lowest peak first."""

    @property
    def reserve(self) -> int:
        return GPU_RESERVE_BYTES if self.device.gpu else 0

    @property
    def fits(self) -> bool:
        return self.memory.peak + self.reserve <= self.device.memory_bytes

    @property
    def flops_per_step(self) -> float:
        t = self.cfg.trainer
        return flops_per_token(self.cfg.model, t.seq_len) * t.global_batch_tokens

    @property
    def step_s(self) -> float | None:
        if self.device.peak_flops is None or self.mfu <= 0:
            return None
        return self.flops_per_step / (self.world_size * self.device.peak_flops * self.mfu)

    def to_dict(self) -> dict:
        step_s = self.step_s
        return {
            "world_size": self.world_size,
            "device": self.device.name,
            "device_memory_bytes": self.device.memory_bytes,
            "reserve_bytes": self.reserve,
            "memory": dataclasses.asdict(self.memory),
            "fits": self.fits,
            "flops_per_step": self.flops_per_step,
            "mfu": self.mfu,
            "step_s": step_s,
            "tokens_per_s": self.cfg.trainer.global_batch_tokens / step_s if step_s else None,
            "advice": [{"override": o, "peak_bytes": p} for o, p in self.advice],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _gib(n: float) -> str:
    return f"{n / GIB:8.2f} GiB"


def format_plan(plan: Plan) -> str:
    cfg, mem, dev = plan.cfg, plan.memory, plan.device
    t, p = cfg.trainer, cfg.parallel
    layout = resolve_dims(p, plan.world_size).describe()
    lines = [
        f"plan: model={cfg.model.name} ({cfg.model.attention}) on {plan.world_size} x {dev.name}, "
        f"parallel={layout} activation_checkpointing={p.activation_checkpointing} "
        f"loss_chunk_tokens={cfg.model.loss_chunk_tokens}",
        f"      seq_len={t.seq_len} micro_batch={t.micro_batch} global_batch_tokens={t.global_batch_tokens}",
        f"per rank ({mem.params_per_rank / 1e6:,.1f} M parameters held):",
        f"  parameters        {_gib(mem.params)}",
        f"  gradients         {_gib(mem.grads)}",
        f"  optimizer state   {_gib(mem.optimizer)}",
        f"  activations       {_gib(mem.activations)}   (at the peak)",
        f"  temporaries       {_gib(mem.temporaries)}   (backward, gathered FSDP parameters, at the peak)",
        f"  logits / loss     {_gib(mem.loss_buffers)}   (head + loss of one micro-batch, alone)",
        f"  peak              {_gib(mem.peak)}"
        + (f"   + {_gib(plan.reserve).strip()} reserve" if plan.reserve else ""),
        f"  device            {_gib(dev.memory_bytes)}   -> "
        + ("fits" if plan.fits else "DOES NOT FIT")
        + f" ({(mem.peak + plan.reserve) / dev.memory_bytes:.0%} used)",
        f"compute: {plan.flops_per_step:.3e} FLOPs per step",
    ]
    if plan.step_s is not None:
        tps = t.global_batch_tokens / plan.step_s
        lines.append(
            f"  at MFU {plan.mfu:.0%}: {plan.step_s:.2f} s per step, {tps:,.0f} tokens/s "
            f"({tps / plan.world_size:,.0f} per device)"
        )
    if plan.advice:
        best, peak = plan.advice[0]
        verdict = "fits" if peak + plan.reserve <= dev.memory_bytes else "still does not fit"
        lines.append(f"helps most: {best} -> peak {_gib(peak).strip()} ({verdict})")
        lines += [f"  also tried: {o} -> peak {_gib(pk).strip()}" for o, pk in plan.advice[1:]]
    return "\n".join(lines)


def candidate_knobs(cfg: RunConfig, world_size: int) -> list[tuple[str, RunConfig]]:
    """Overrides that lower the peak memory without changing what is trained."""
    out: list[tuple[str, RunConfig]] = []
    m, t, p = cfg.model, cfg.trainer, cfg.parallel

    def with_(label: str, section: str, **changes: object) -> None:
        out.append(
            (
                label,
                dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)}),
            )
        )

    chunk = ModelConfig.loss_chunk_tokens  # the default
    if m.loss_chunk_tokens == 0 and t.micro_batch * t.seq_len > chunk:
        with_(f"model.loss_chunk_tokens={chunk}", "model", loss_chunk_tokens=chunk)
    if p.activation_checkpointing in ("none", "every_k"):
        with_("parallel.activation_checkpointing=selective", "parallel", activation_checkpointing="selective")
    if p.activation_checkpointing != "full":
        with_("parallel.activation_checkpointing=full", "parallel", activation_checkpointing="full")
    dims = resolve_dims(p, world_size)
    if t.micro_batch > 1 and t.global_batch_tokens % (t.seq_len * (t.micro_batch // 2) * dims.dp_size) == 0:
        with_(f"trainer.micro_batch={t.micro_batch // 2}", "trainer", micro_batch=t.micro_batch // 2)
    if not dims.fsdp and dims.dp_replicate > 1:
        with_("parallel=fsdp", "parallel", dp_replicate=1, dp_shard=-1)
    return out


def make_plan(cfg: RunConfig, world_size: int, device: DeviceSpec, mfu: float, advise: bool = True) -> Plan:
    """Traces `cfg` at `world_size` ranks on `device`; when it does not fit (and `advise`), traces each
    candidate knob too."""
    plan = Plan(cfg, world_size, device, trace_memory(cfg, world_size, device.gpu), mfu)
    if advise and not plan.fits:
        tried = [
            (label, trace_memory(c, world_size, device.gpu).peak)
            for label, c in candidate_knobs(cfg, world_size)
        ]
        plan.advice = sorted(tried, key=lambda item: item[1])
    return plan
