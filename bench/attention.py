"""Forward + backward time of one attention module: DIFF V2 vs the baseline with h and with 2h heads.

`python -m bench.attention [--repeats 7] [--warmup 2] [--threads 1]`. Every figure is printed with its ratio
to the baseline with 2h heads (the same query width as DIFF V2) measured in the same run, variants interleaved
round by round, so machine noise hits all of them alike. DIFF V2's extra work over that baseline is one
D -> h projection and one elementwise `a1 - lambda * a2`, and it saves half of o_proj: expect ~1.0.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from model.attention import Attention
from model.rope import rope_tables


@dataclass(frozen=True)
class Shape:
    batch: int
    seq_len: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int

    def __str__(self) -> str:
        return (
            f"B={self.batch} N={self.seq_len} D={self.d_model} h={self.n_heads} "
            f"h_kv={self.n_kv_heads} d={self.head_dim}"
        )


SHAPES = (
    Shape(4, 256, 512, 8, 4, 64),
    Shape(2, 512, 768, 12, 6, 64),
    Shape(1, 1024, 1024, 16, 4, 64),
)


def variants(s: Shape) -> dict[str, nn.Module]:
    """The three modules compared at one shape (the reference's module, use_diff_v2 on or off)."""
    d_model, h, h_kv, d = s.d_model, s.n_heads, s.n_kv_heads, s.head_dim
    return {
        "diff_v2 (2h query heads)": Attention(d_model, h, h_kv, d, use_diff_v2=True),
        "baseline h heads": Attention(d_model, h, h_kv, d, use_diff_v2=False),
        "baseline 2h heads": Attention(d_model, 2 * h, h_kv, d, use_diff_v2=False),
    }


def fwd_bwd_seconds(module: nn.Module, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> float:
    start = time.perf_counter()
    module(x, rope).sum().backward()
    return time.perf_counter() - start


def bench_shape(s: Shape, warmup: int, repeats: int) -> dict[str, float]:
    """Median forward+backward seconds per variant, the variants interleaved in each round."""
    torch.manual_seed(0)
    modules = variants(s)
    x = torch.randn(s.batch, s.seq_len, s.d_model, requires_grad=True)
    rope = rope_tables(s.head_dim, s.seq_len, 10000.0)
    times: dict[str, list[float]] = {name: [] for name in modules}
    for round_ in range(warmup + repeats):
        for name, module in modules.items():
            seconds = fwd_bwd_seconds(module, x, rope)
            if round_ >= warmup:
                times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.attention", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per shape (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds per shape")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads (1 by default: on a shared small machine, threads that wait for a busy core "
        "make timings several times slower and far noisier)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"attention fwd+bwd on {torch.get_num_threads()} CPU threads, torch {torch.__version__}; "
        f"median of {args.repeats}, ratio = time / baseline-2h time"
    )
    for shape in SHAPES:
        medians = bench_shape(shape, args.warmup, args.repeats)
        reference = medians["baseline 2h heads"]
        print(f"\n{shape}")
        for name, seconds in medians.items():
            print(f"  {name:<26} {seconds * 1e3:9.2f} ms   ratio {seconds / reference:5.2f}")


if __name__ == "__main__":
    main()
