"""`python -m bench.parallel`: what moves between ranks per training step at each parallel layout, and the
tokens/s of data parallel against tensor parallel on the same devices, measured in one run.

    python -m bench.parallel                       # CPU/gloo: FSDP 2, TP 2, FSDP 2 x TP 2 (4 ranks)
    python -m bench.parallel --layouts tp2 fsdp2 model=125m trainer.seq_len=2048 trainer.device=cuda

Each layout is its own torchrun job (this module with --worker) that builds the model as `python -m train`
does, trains one warm-up step, then records one step (forward, backward, gradient clipping, optimizer) under
torch's CommDebugMode, extended to add up the bytes of each collective (the size of the full tensor it
gathers, scatters or reduces), then times `--steps` more steps on random tokens. The table puts the
measured collectives next to the volumes the shapes predict:

- TP t (sequence parallel): per block, an all-gather of the [tokens, d_model] activations before attention
  and before the FFN and a reduce-scatter after each; one more of each around the embedding and the head;
  backward mirrors forward. Small all-reduces (the vocab-parallel loss's max and sums, the norms' weight
  gradients, the gradient norm) are counted but not predicted.
- FSDP s: the blocks' and root's parameters are all-gathered in forward, the blocks' again in backward (the
  last block stays gathered), and every gradient is reduce-scattered in fp32. With TP each rank gathers
  only its 1/t of the parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.distributed.tensor.debug import CommDebugMode
from torch.utils._pytree import tree_leaves

from bench.config import CONF_DIR, compose_run_config

REPO = CONF_DIR.parent
LAYOUTS = {
    "fsdp2": (2, ["parallel=fsdp"]),
    "tp2": (2, ["parallel=fsdp", "parallel.tp=2"]),
    "fsdp2xtp2": (4, ["parallel=fsdp", "parallel.tp=2"]),
}
"""name -> (ranks, overrides). "DP 2" is FSDP 2: DDP's all-reduce runs in C++ where CommDebugMode cannot
see it."""
DEFAULTS = ["model=tiny", "trainer.seq_len=128", "trainer.micro_batch=4", "trainer.global_batch_tokens=1024"]
KINDS = ("all_gather", "reduce_scatter", "all_reduce")


def _kind(op_name: str) -> str:
    for kind, marks in (("all_gather", ("allgather", "all_gather")), ("reduce_scatter", ("reduce_scatter",))):
        if any(mark in op_name for mark in marks):
            return kind
    return "all_reduce" if "allreduce" in op_name or "all_reduce" in op_name else "other"


class ByteCountingCommMode(CommDebugMode):
    """CommDebugMode that also adds up, per kind of collective, the bytes of the largest tensor each call
    touches: the gathered output, the input before scattering, the reduced tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's hook)
        before = sum(self.comm_counts.values())
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if out is not NotImplemented and sum(self.comm_counts.values()) > before:
            tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
            kind = _kind(str(func._overloadpacket))
            self.calls[kind] += 1
            self.bytes[kind] += max((t.numel() * t.element_size() for t in tensors), default=0)
        return out


def expected_bytes(cfg, tp: int, dp_shard: int, params: int, block_params: int) -> dict[str, tuple[int, int]]:  # noqa: ANN001
    """kind -> (calls, bytes) the shapes predict for one step of one micro-batch (fp32)."""
    n_layers, tokens = cfg.model.n_layers, cfg.trainer.micro_batch * cfg.trainer.seq_len
    calls = defaultdict(int)
    volume = defaultdict(int)
    if tp > 1:
        per_pass = 2 * n_layers + 1  # attention and FFN of each block, plus the embedding / the head
        activation = tokens * cfg.model.d_model * 4
        for kind in ("all_gather", "reduce_scatter"):
            calls[kind] += 2 * per_pass
            volume[kind] += 2 * per_pass * activation
    if dp_shard > 1:
        root = params - n_layers * block_params
        calls["all_gather"] += (n_layers + 1) + (n_layers - 1)
        volume["all_gather"] += (params + (n_layers - 1) * block_params) * 4 // tp
        calls["reduce_scatter"] += n_layers + 1
        volume["reduce_scatter"] += (root + n_layers * block_params) * 4 // tp
    return {kind: (calls[kind], volume[kind]) for kind in ("all_gather", "reduce_scatter")}


def worker(out: Path, steps: int, overrides: list[str]) -> None:
    """One layout, on every rank of its torchrun job; rank 0 writes the figures to `out`."""
    from train.loop import lm_loss
    from train.optim import build_optimizer
    from train.parallel import (
        build_model,
        finish_gradients,
        init_distributed,
        loss_context,
        shutdown_distributed,
    )

    cfg = compose_run_config(overrides)
    info = init_distributed(cfg.parallel, cfg.trainer.device)
    try:
        model, raw = build_model(cfg.model, cfg.parallel, info, cfg.run.seed)
        optimizer = build_optimizer(model, cfg.optim, info.device)
        t = cfg.trainer
        generator = torch.Generator().manual_seed(info.dp_rank)  # one batch per data-parallel rank
        batch = torch.randint(cfg.model.vocab_size, (t.micro_batch, t.seq_len + 1), generator=generator)
        batch = batch.to(info.device)

        def step() -> None:
            with loss_context(info):
                lm_loss(model, batch[:, :-1], batch[:, 1:]).backward()
            finish_gradients(model, info, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()  # warm-up: lazy init, allocator
        with ByteCountingCommMode() as comm:
            step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        elapsed = time.perf_counter() - start
        if info.is_main:
            block = sum(p.numel() for p in raw.layers[0].parameters())  # a DTensor counts its global size
            result = {
                "ranks": info.world_size,
                "dims": info.dims.describe(),
                "calls": dict(comm.calls),
                "bytes": dict(comm.bytes),
                "expected": expected_bytes(cfg, info.dims.tp, info.dims.dp_shard, raw.num_params(), block),
                "tokens_per_s": steps * t.micro_batch * t.seq_len * info.dp_size / elapsed,
            }
            out.write_text(json.dumps(result))
    finally:
        shutdown_distributed()


def _mib(value: float) -> str:
    return f"{value / 2**20:8.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.parallel", description=__doc__.split("\n")[0])
    parser.add_argument("--layouts", nargs="+", choices=sorted(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per layout")
    parser.add_argument("--json", type=Path, help="also write each layout's figures here")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every layout")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.steps, args.overrides)
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.layouts:
            nproc, layout = LAYOUTS[name]
            out = Path(tmp) / f"{name}.json"
            torchrun = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={nproc}",
            ]
            cmd = [*torchrun, "-m", "bench.parallel", "--worker", str(out), "--steps", str(args.steps)]
            cmd += [*DEFAULTS, "wandb.mode=disabled", *layout, *args.overrides]
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{name}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}", flush=True)
                continue
            results[name] = json.loads(out.read_text())
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(f"collectives of one training step ({' '.join(DEFAULTS + args.overrides)}, fp32), per layout:")
    print(f"{'layout':<16} {'collective':<15} {'calls':>6} {'expected':>8} {'MiB':>8} {'expected':>8}")
    for r in results.values():
        for kind in KINDS:
            calls, moved = r["calls"].get(kind, 0), r["bytes"].get(kind, 0)
            want = r["expected"].get(kind)
            want_calls, want_mib = (str(want[0]), _mib(want[1])) if want else ("-", "       -")
            print(f"{r['dims']:<16} {kind:<15} {calls:>6} {want_calls:>8} {_mib(moved)} {want_mib}")
    if "fsdp2" in results and "tp2" in results:
        dp, tp = results["fsdp2"]["tokens_per_s"], results["tp2"]["tokens_per_s"]
        print(f"tokens/s on 2 ranks: DP (FSDP) 2 {dp:,.0f}, TP 2 {tp:,.0f}: TP / DP = {tp / dp:.2f}")
    for r in results.values():
        print(f"tokens/s {r['dims']:<16} {r['tokens_per_s']:10,.0f} on {r['ranks']} ranks")


if __name__ == "__main__":
    main()
