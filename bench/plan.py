"""`python -m bench.plan`: the planner's peak memory against a measured one on CPU, and what the chunked loss
and selective checkpointing save and cost, all measured in the same run.

    python -m bench.plan [--cases NAME ...] [--steps 6] [--json PATH]

Measured: every case is a real `python -m train` job (torchrun for 2 ranks) of --steps steps, whose metrics
report rank 0's peak resident set less its file-backed pages (train/throughput.py's peak_memory_gb). That
includes what any process of the job holds without training (Python, torch, the data loader), so a floor job
of the same ranks and loader with a 1-layer, 16-wide model and one sequence per micro-batch is measured too,
and subtracted:
    measured = peak RSS(case) - peak RSS(floor),  planned = plan(case).peak - plan(floor).peak
with `python -m train.plan <the case's overrides> --world-size N --device cpu --json`. CPU runs fp32.

The jobs run with glibc's mmap threshold fixed at 64 KiB (MALLOC_MMAP_THRESHOLD_), so every tensor of
64 KiB or more is its own mapping, returned to the system when freed, and the peak RSS follows the live
tensors as a GPU's max_memory_allocated does. By default glibc raises the threshold after each large free
(up to 32 MiB) and then serves those tensors from its heap, which keeps freed pages resident: the same
1-rank tiny step then peaks 0.45 GiB above the process's start against 0.31 GiB with the threshold fixed,
while torch's MemTracker on the real tensors counts a 0.29 GiB peak (the planner's, to the byte). That
retention is the C allocator's, which a GPU run does not have, so it is kept out of the plan and out of the
measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.throughput import REPO, train_command
from train.metrics import METRICS_FILE, read_metrics

BASE = [
    "data=stdlib_small",
    "model=tiny",
    "model.vocab_size=${data.tokenizer.vocab_size}",
    "trainer.seq_len=256",
    "trainer.micro_batch=8",
    "trainer.global_batch_tokens=4096",
    "optim.warmup_steps=1",
    "trainer.eval_interval=0",
    "trainer.eval_batches=1",
    "trainer.diag_interval=0",
    "checkpoint.enabled=false",
    "checkpoint.export_safetensors=false",
    "checkpoint.resume=none",
    "wandb.mode=disabled",
]
MEASURED_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
"""See the module docstring: the measured jobs' RSS follows their live tensors."""
FLOOR = [
    "model.n_layers=1",
    "model.d_model=16",
    "model.n_heads=1",
    "model.n_kv_heads=1",
    "model.head_dim=16",
    "model.ffn_hidden=16",
    "trainer.micro_batch=1",
]
"""The floor job: the same processes and loader, next to no model (its own small plan is subtracted too)."""
FSDP = "parallel=fsdp"
MOE = ["model.moe_experts=4", "model.moe_hidden=344"]
"""tiny with 4 experts of half its dense width, top-2: the same active feed-forward as tiny."""
CASES: dict[str, tuple[int, list[str]]] = {
    "1rank": (1, []),
    "1rank-full": (1, ["parallel.activation_checkpointing=full"]),
    "1rank-selective": (1, ["parallel.activation_checkpointing=selective"]),
    "1rank-chunked": (1, ["model.loss_chunk_tokens=256"]),
    "2rank-fsdp": (2, [FSDP]),
    "2rank-fsdp-full": (2, [FSDP, "parallel.activation_checkpointing=full"]),
    "2rank-fsdp-selective": (2, [FSDP, "parallel.activation_checkpointing=selective"]),
    "2rank-tp": (2, ["parallel.tp=2"]),
    "1rank-moe": (1, MOE),
    "2rank-fsdp-moe": (2, [FSDP, *MOE]),
    "2rank-ep": (2, [FSDP, "parallel.ep=2", *MOE]),
}
"""name -> (ranks, overrides); the ratios below compare each variant with its same-rank baseline."""
BASELINES = {"1rank-full": "1rank", "1rank-selective": "1rank", "1rank-chunked": "1rank"}
BASELINES |= {"2rank-fsdp-full": "2rank-fsdp", "2rank-fsdp-selective": "2rank-fsdp"}
BASELINES |= {"2rank-tp": "2rank-fsdp", "2rank-ep": "2rank-fsdp-moe"}


@dataclass
class Result:
    case: str
    ranks: int
    planned_gib: float
    measured_gib: float
    tokens_per_s: float

    @property
    def ratio(self) -> float:
        return self.planned_gib / self.measured_gib


def _train(ranks: int, overrides: list[str], run_dir: Path, steps: int) -> tuple[float, float]:
    """Peak RSS (GiB) and tokens/s of the last step of a real job."""
    args = [
        *BASE,
        *overrides,
        f"trainer.max_steps={steps}",
        f"trainer.log_interval={steps}",
        f"run.dir={run_dir}",
    ]
    proc = subprocess.run(
        train_command(0 if ranks == 1 else ranks, args),
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ | MEASURED_ENV,
    )
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    last = [row for row in read_metrics(run_dir / METRICS_FILE) if "peak_mem_gb" in row][-1]
    return last["peak_mem_gb"], last["tokens_per_s"]


def _plan(ranks: int, overrides: list[str]) -> float:
    """The planner's peak (GiB) for the same job."""
    cmd = [
        sys.executable,
        "-m",
        "train.plan",
        *BASE,
        *overrides,
        f"--world-size={ranks}",
        "--device=cpu",
        "--json",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)["memory"]["peak"] / 2**30


def measure(names: list[str], steps: int, tmp: Path) -> list[Result]:
    floors: dict[int, tuple[float, float]] = {}
    results = []
    for name in names:
        ranks, overrides = CASES[name]
        if ranks not in floors:
            floor = [*FLOOR, *([FSDP] if ranks > 1 else [])]
            floor_rss, _ = _train(ranks, floor, tmp / f"floor{ranks}", steps)
            floors[ranks] = (floor_rss, _plan(ranks, floor))
        rss, tokens_per_s = _train(ranks, overrides, tmp / name, steps)
        floor_rss, floor_plan = floors[ranks]
        results.append(
            Result(name, ranks, _plan(ranks, overrides) - floor_plan, rss - floor_rss, tokens_per_s)
        )
    return results


def print_table(results: list[Result]) -> None:
    by_name = {r.case: r for r in results}
    print(
        f"{'case':<22} {'planned GiB':>11} {'measured GiB':>12} {'plan/meas':>9} {'tok/s':>8} "
        f"{'mem vs base':>11} {'tok/s vs base':>13}"
    )
    for r in results:
        base = by_name.get(BASELINES.get(r.case, ""))
        mem = f"{r.measured_gib / base.measured_gib:.2f}" if base else ""
        speed = f"{r.tokens_per_s / base.tokens_per_s:.2f}" if base else ""
        print(
            f"{r.case:<22} {r.planned_gib:>11.3f} {r.measured_gib:>12.3f} {r.ratio:>9.2f} "
            f"{r.tokens_per_s:>8.0f} {mem:>11} {speed:>13}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.plan", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per job")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        results = measure(args.cases, args.steps, Path(tmp))
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) | {"ratio": r.ratio} for r in results], indent=2))


if __name__ == "__main__":
    main()
