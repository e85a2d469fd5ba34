"""`python -m bench.checkpoint`: how long a DCP checkpoint stops training, blocking vs `async_save`, and
how long resuming takes, with the framework's own Checkpointer and TrainState (model, AdamW state after one
step, LR schedule, loader, RNG, counters).

    python -m bench.checkpoint                       # model=125m, one process, FSDP2 on a 1-rank mesh
    torchrun --nproc_per_node=2 -m bench.checkpoint model=350m    # any Hydra overrides

The ratio that matters is async/blocking: the time the training loop waits for a background save (it
copies the state, then DCP writes on its own gloo group) over the time it waits for a blocking one. Also
the cost of integrity: sha256 checksums written at save (part of both save times) and verified before a
resume (rank 0, before the load), against the load alone.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch.distributed as dist
import torch.nn.functional as F

from bench.config import compose_run_config
from conf.schema import to_yaml
from data import TokenLoader, ensure_dataset
from data.spec import LoaderSpec
from train.checkpoint import Checkpointer
from train.checksums import verify_checksums, write_checksums
from train.optim import LRSchedule, build_optimizer
from train.parallel import build_model, from_rank0, init_distributed, shutdown_distributed
from train.spikes import spike_counters
from train.state import Counters, TrainState

DEFAULTS = [
    "model=125m",
    "data=stdlib_small",
    "parallel=fsdp",
    "trainer.seq_len=128",
    "trainer.micro_batch=2",
]
ROUNDS = 3


def _du_gb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e9


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    overrides = [*DEFAULTS, *(argv if argv is not None else sys.argv[1:])]
    cfg = compose_run_config([*overrides, "checkpoint.async_save=true", "checkpoint.keep_last=1"])
    info = init_distributed(cfg.parallel, cfg.trainer.device)
    try:
        if info.is_main:
            ensure_dataset(cfg.data)
        dist.barrier()
        t = cfg.trainer
        model, raw = build_model(cfg.model, cfg.parallel, info, cfg.run.seed)
        optimizer = build_optimizer(model, cfg.optim, info.device)
        schedule = LRSchedule(optimizer, cfg.optim, t.max_steps)
        loader = TokenLoader(
            cfg.data.dir,
            LoaderSpec("train", t.seq_len, t.micro_batch, 0, dp_rank=info.dp_rank, dp_size=info.dp_size),
        )
        inputs, targets = (x.to(info.device) for x in next(loader))
        F.cross_entropy(model(inputs).float().flatten(0, 1), targets.flatten()).backward()
        optimizer.step()  # AdamW's moments exist only after a step: checkpoints carry them
        state = TrainState(model, optimizer, schedule, loader, Counters(*spike_counters(t), step=1))

        with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as own_tmp:
            root = Path(from_rank0(own_tmp, info)) / "checkpoints"  # rank 0's: every rank writes there
            checkpointer = Checkpointer(cfg.checkpoint, root, info, to_yaml(cfg))
            blocking, async_wait, async_total, load, verify, checksum = [], [], [], [], [], []
            for i in range(ROUNDS):
                blocking.append(_timed(lambda i=i: checkpointer.save(state, 2 * i + 1, block=True)))
                start = time.perf_counter()
                checkpointer.save(state, 2 * i + 2)
                async_wait.append(time.perf_counter() - start)
                checkpointer.wait()
                async_total.append(time.perf_counter() - start)
                path = root / f"step_{2 * i + 2:08d}"
                if info.is_main:  # what a resume does on rank 0 before loading (train.rundir.choose_resume)
                    verify.append(_timed(lambda path=path: verify_checksums(path)))
                    checksum.append(_timed(lambda path=path: write_checksums(path)))
                dist.barrier()
                load.append(_timed(lambda path=path: checkpointer.load(state, path)))
            size = _du_gb(root / f"step_{2 * ROUNDS:08d}") if info.is_main else 0.0
            dist.barrier()
        loader.close()
        if info.is_main:
            _report(raw.num_params(), size, info.world_size, blocking, async_wait, async_total, load)
            _report_integrity(size, load, verify, checksum)
    finally:
        shutdown_distributed()


def _report(params: int, size_gb: float, world: int, blocking, async_wait, async_total, load) -> None:
    med = statistics.median
    print(
        f"{params / 1e6:.0f}M params, checkpoint {size_gb:.2f} GB on disk (model + AdamW + the rest), "
        f"{world} rank(s), median of {ROUNDS} rounds"
    )
    print(f"blocking save:  training waits {med(blocking):6.2f} s  ({size_gb / med(blocking):.2f} GB/s)")
    print(
        f"async save:     training waits {med(async_wait):6.2f} s  (written in the background in "
        f"{med(async_total):.2f} s)"
    )
    print(f"load (resume):  {med(load):6.2f} s")
    print(f"ratio async wait / blocking wait: {med(async_wait) / med(blocking):.2f}  (lower is better)")


def _report_integrity(size_gb: float, load: list, verify: list, checksum: list) -> None:
    med = statistics.median
    print(
        f"checksums at save: {med(checksum):6.2f} s  (sha256 of {size_gb:.2f} GB, included in the save "
        "times above)"
    )
    print(
        f"resume verified: {med(verify) + med(load):6.2f} s  = verify {med(verify):.2f} s "
        f"({size_gb / med(verify):.2f} GB/s) + load {med(load):.2f} s; checkpoint.verify=false: "
        f"{med(load):.2f} s"
    )
    print(f"ratio verified / unverified resume: {(med(verify) + med(load)) / med(load):.2f}")


if __name__ == "__main__":
    main()
