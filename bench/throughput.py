"""`python -m bench.throughput`: training tokens/s, MFU and peak memory per model size x attention variant
(x compile off/on), measured through `python -m train` itself; each variant's cost is printed as a ratio to
the baseline of the same size and compile setting, measured in the same run.

    python -m bench.throughput                                   # CPU: tiny, baseline vs DIFF V2
    python -m bench.throughput --sizes 125m 1.3b --compile off on --json $OUT/throughput.json \\
        trainer.seq_len=2048 trainer.micro_batch=8 trainer.global_batch_tokens=16384   # one GPU

Every measurement is its own process (its own peak memory, no compile cache shared between variants) that
trains `--steps` optimizer steps with checkpoints, evaluation and diagnostics off. Tokens/s is the loop's own
figure over steps 2..N, so step 1's one-off compilation and warm-up are left out. MFU needs a known device
(the A100/H100/H200/B200 table) or `trainer.peak_tflops=...`; on CPU it is n/a.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.config import CONF_DIR, compose_run_config
from model import Transformer
from model.flops import flops_per_token
from train.metrics import METRICS_FILE, read_metrics

REPO = CONF_DIR.parent
QUIET = [
    "data=stdlib_small",
    "parallel=fsdp",
    "parallel.init=sharded",  # each device initialises its own shards: no full fp32 copy on the host
    "wandb.mode=disabled",
    "checkpoint.enabled=false",
    "checkpoint.export_safetensors=false",
    "checkpoint.resume=none",
    "trainer.eval_interval=0",
    "trainer.eval_batches=1",
    "trainer.diag_interval=0",
    "optim.warmup_steps=1",
]
"""Overrides every measurement gets before the user's: the training loop and nothing else."""


@dataclass
class Measurement:
    size: str
    attention: str
    compile: bool
    params: int
    flops_per_token: float
    tokens_per_s: float | None = None
    tokens_per_s_per_device: float | None = None
    mfu: float | None = None
    peak_mem_gb: float | None = None
    error: str | None = None


def _overrides(size: str, attention: str, compiled: bool, steps: int, user: list[str]) -> list[str]:
    return [
        *QUIET,
        f"model={size}",
        f"attention={attention}",
        f"parallel.compile={str(compiled).lower()}",
        f"trainer.max_steps={steps}",
        f"trainer.log_interval={steps}",
        *user,
    ]


def train_command(nproc: int, overrides: list[str]) -> list[str]:
    if nproc == 0:
        return [sys.executable, "-m", "train", *overrides]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*torchrun, "-m", "train", *overrides]


def measure(size: str, attention: str, compiled: bool, args: argparse.Namespace, tmp: Path) -> Measurement:
    """One training job of `args.steps` steps; its last metrics row is the measurement."""
    label = f"{size}-{attention}-{'compiled' if compiled else 'eager'}"
    overrides = [*_overrides(size, attention, compiled, args.steps, args.overrides), f"run.dir={tmp / label}"]
    cfg = compose_run_config(overrides)
    with torch.device("meta"):
        params = Transformer(cfg.model).num_params()
    result = Measurement(size, attention, compiled, params, flops_per_token(cfg.model, cfg.trainer.seq_len))
    proc = subprocess.run(train_command(args.nproc, overrides), cwd=REPO, capture_output=True, text=True)
    (tmp / f"{label}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        last_lines = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        result.error = f"exit {proc.returncode}: {' | '.join(last_lines)}"
        return result
    rows = read_metrics(tmp / label / METRICS_FILE)
    last = [row for row in rows if "tokens_per_s_per_device" in row][-1]  # the last step's row
    for key in ("tokens_per_s", "tokens_per_s_per_device", "mfu", "peak_mem_gb"):
        setattr(result, key, last.get(key))
    return result


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(results: list[Measurement]) -> None:
    """One line per measurement; `vs baseline` divides tokens/s by the same size's and compile setting's
    `baseline` (the h-head GQA Transformer) from this run."""
    baseline = {(r.size, r.compile): r.tokens_per_s for r in results if r.attention == "baseline"}
    print(
        f"{'size':>6} {'attention':<22} {'compile':<7} {'params':>8} {'GFLOP/tok':>9} {'tok/s':>10} "
        f"{'tok/s/dev':>10} {'MFU':>6} {'mem GiB':>7} {'vs baseline':>11}"
    )
    for r in results:
        if r.error:
            print(f"{r.size:>6} {r.attention:<22} {str(r.compile):<7} failed: {r.error}")
            continue
        base = baseline.get((r.size, r.compile))
        ratio = r.tokens_per_s / base if base and r.tokens_per_s else None
        print(
            f"{r.size:>6} {r.attention:<22} {str(r.compile):<7} {r.params / 1e6:7.1f}M "
            f"{r.flops_per_token / 1e9:9.3f} {_fmt(r.tokens_per_s, '10,.0f')} "
            f"{_fmt(r.tokens_per_s_per_device, '10,.0f')} {_fmt(r.mfu, '6.1%')} "
            f"{_fmt(r.peak_mem_gb, '7.2f')} {_fmt(ratio, '10.3f')}x"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny"], help="conf/model presets")
    parser.add_argument("--attentions", nargs="+", default=["baseline", "diff_v2"], help="conf/attention")
    parser.add_argument("--compile", nargs="+", choices=["off", "on"], default=["off"])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per measurement (>= 2)")
    parser.add_argument("--nproc", type=int, default=0, help="0: one process; N: torchrun with N ranks")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--keep", type=Path, help="keep run dirs and logs here instead of a temp dir")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every measurement")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2: step 1 (warm-up, compilation) is not timed")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        for size in args.sizes:
            for compiled in (mode == "on" for mode in args.compile):
                for attention in args.attentions:
                    results.append(measure(size, attention, compiled, args, tmp))
                    print(f"measured {size} {attention} compile={compiled}", flush=True)
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
