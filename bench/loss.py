"""LM head + loss, forward and backward: the whole-logits path against the fused chunked loss (model/loss.py).

`python -m bench.loss [--shapes tiny 125m] [--chunks 1024 2048] [--repeats 3] [--warmup 1] [--threads 1]`.
For each shape (tokens of one micro-batch x d_model x vocab) it times `lm_cross_entropy(...).backward()` with
model.loss_chunk_tokens=0 and with each chunk size, the variants interleaved round by round so machine noise
hits all of them alike, and prints the median tokens/s with the spread (min-max) over the rounds, and the
peak memory of one forward + backward (torch's MemTracker on CPU, torch.cuda.max_memory_allocated on CUDA;
hidden states, the head's weight and their gradients included), each with its ratio to the whole path.
CPU: fp32; CUDA: bf16 hidden states and weight, as FSDP2's mixed precision hands them to the head.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.distributed._tools.mem_tracker import MemTracker

from model.loss import lm_cross_entropy


@dataclass(frozen=True)
class Shape:
    tokens: int
    """Tokens of one micro-batch (micro_batch x seq_len)."""
    d_model: int
    vocab: int

    def __str__(self) -> str:
        return f"tokens={self.tokens} d_model={self.d_model} vocab={self.vocab}"


SHAPES = {
    # model=tiny as `make train` runs it: micro_batch 16 x seq_len 256, conf/data/stdlib's 8192 tokens
    "tiny": Shape(4096, 256, 8192),
    "125m": Shape(4096, 768, 50304),
    "1.3b": Shape(8192, 2048, 50304),
}


@dataclass
class Inputs:
    hidden: torch.Tensor
    weight: torch.Tensor
    targets: torch.Tensor


def make_inputs(shape: Shape, device: torch.device, dtype: torch.dtype) -> Inputs:
    gen = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(shape.tokens, shape.d_model, generator=gen).to(device, dtype).requires_grad_()
    weight = (
        (0.02 * torch.randn(shape.vocab, shape.d_model, generator=gen)).to(device, dtype).requires_grad_()
    )
    targets = torch.randint(0, shape.vocab, (shape.tokens,), generator=gen).to(device)
    return Inputs(hidden, weight, targets)


def fwd_bwd(x: Inputs, chunk: int) -> None:
    x.hidden.grad = x.weight.grad = None
    lm_cross_entropy(x.hidden, x.weight, x.targets, chunk).backward()


def seconds(run: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_bytes(x: Inputs, chunk: int, device: torch.device) -> int:
    """Peak bytes alive during one forward + backward, inputs and gradients included."""
    x.hidden.grad = x.weight.grad = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        fwd_bwd(x, chunk)
        return torch.cuda.max_memory_allocated(device)
    tracker = MemTracker()
    tracker.track_external(x.hidden, x.weight, x.targets)
    with tracker:
        fwd_bwd(x, chunk)
    return tracker.get_tracker_snapshot("peak")[device]["Total"]


def bench_shape(shape: Shape, chunks: list[int], warmup: int, repeats: int, device: torch.device) -> None:
    x = make_inputs(shape, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    variants = [0, *chunks]
    times: dict[int, list[float]] = {c: [] for c in variants}
    for round_ in range(warmup + repeats):
        for chunk in variants:
            elapsed = seconds(lambda chunk=chunk: fwd_bwd(x, chunk), device)
            if round_ >= warmup:
                times[chunk].append(elapsed)
    peaks = {chunk: peak_bytes(x, chunk, device) for chunk in variants}
    tps = {c: sorted(shape.tokens / t for t in ts) for c, ts in times.items()}
    base_tps, base_peak = statistics.median(tps[0]), peaks[0]
    print(f"\n{shape}")
    print(
        f"  {'loss_chunk_tokens':<18} {'tokens/s':>10} {'(min-max)':>17} {'vs whole':>8} "
        f"{'peak MiB':>9} {'vs whole':>8}"
    )
    for chunk in variants:
        med = statistics.median(tps[chunk])
        spread = f"({tps[chunk][0]:,.0f}-{tps[chunk][-1]:,.0f})"
        name = "0 (whole)" if chunk == 0 else str(chunk)
        print(
            f"  {name:<18} {med:10,.0f} {spread:>17} {med / base_tps:8.2f} "
            f"{peaks[chunk] / 2**20:9.1f} {peaks[chunk] / base_peak:8.2f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loss", description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["tiny", "125m"], choices=sorted(SHAPES))
    parser.add_argument(
        "--chunks", nargs="+", type=int, default=[1024, 2048], help="loss_chunk_tokens to time"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (median and min-max reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds")
    parser.add_argument("--threads", type=int, default=1, help="intra-op CPU threads (1: a shared machine)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = f"{torch.get_num_threads()} CPU threads, fp32" if device.type == "cpu" else f"{device}, bf16"
    print(
        f"LM head + loss forward+backward on {where}, torch {torch.__version__}; median of {args.repeats} "
        "interleaved rounds; ratios against loss_chunk_tokens=0 (whole logits) measured in the same run"
    )
    for name in args.shapes:
        bench_shape(SHAPES[name], args.chunks, args.warmup, args.repeats, device)


if __name__ == "__main__":
    main()
