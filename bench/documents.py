"""`python -m bench.documents`: the cost of document-aware attention (model.doc_mask) against plain causal.

For each attention variant, the tiny model's forward + backward on the same packed windows, with the document
mask off and on (and with RoPE positions restarting per document), interleaved round by round so machine noise
hits both alike; printed as the ratio masked / plain, for the attention kernel calls alone and for the whole
step. Documents are cut at random lengths (exponential, mean --doc-len tokens), as a packed corpus would be.
On CPU and with SDPA the mask is a dense [B, 1, N, N] boolean, which moves SDPA off its fused causal path;
on CUDA with flash-attn the variable-length kernel skips the masked blocks instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

import model.attention as attention_module
from model import ModelConfig, Transformer


def packed_windows(batch: int, seq_len: int, vocab: int, eot: int, doc_len: float, seed: int) -> torch.Tensor:
    """[batch, seq_len] random tokens with an end-of-text token after documents of random length."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, eot, (batch, seq_len), generator=gen)
    ends = torch.rand(batch, seq_len, generator=gen) < 1.0 / doc_len
    return tokens.masked_fill(ends, eot)


class KernelTimer:
    """Wraps the kernel function the attention modules call, adding up its forward wall time."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._real = attention_module.attention

    def __enter__(self) -> KernelTimer:
        def timed(*args: object, **kwargs: object) -> torch.Tensor:
            start = time.perf_counter()
            out = self._real(*args, **kwargs)
            self.seconds += time.perf_counter() - start
            return out

        attention_module.attention = timed
        return self

    def __exit__(self, *exc: object) -> None:
        attention_module.attention = self._real


def step_seconds(model: Transformer, tokens: torch.Tensor) -> tuple[float, float]:
    """(whole fwd+bwd step, attention kernel forward calls) in seconds."""
    with KernelTimer() as kernel:
        start = time.perf_counter()
        model(tokens).float().sum().backward()
        total = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return total, kernel.seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.documents", description=__doc__)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--doc-len", type=float, default=200.0, help="mean document length in tokens")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--attentions", nargs="+", default=["baseline", "diff_v1", "diff_v2"])
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = ModelConfig(max_seq_len=args.seq_len, eot_token=8191)
    tokens = packed_windows(args.micro_batch, args.seq_len, base.vocab_size, 8191, args.doc_len, seed=0)
    docs_per_row = (tokens == 8191).sum(1).float().mean().item() + 1
    print(
        f"tiny model, [{args.micro_batch}, {args.seq_len}] windows, ~{docs_per_row:.1f} documents each, "
        f"{torch.get_num_threads()} threads; median of {args.rounds} rounds, fwd+bwd"
    )
    modes = {
        "plain causal": {},
        "doc_mask": {"doc_mask": True},
        "+ doc_positions": {"doc_mask": True, "doc_positions": True},
    }
    for attention in args.attentions:
        models = {}
        for mode, extra in modes.items():
            torch.manual_seed(0)
            models[mode] = Transformer(dataclasses.replace(base, attention=attention, **extra))
        times: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
        for model in models.values():  # warm-up
            step_seconds(model, tokens)
        for _ in range(args.rounds):
            for mode, model in models.items():
                times[mode].append(step_seconds(model, tokens))
        plain_step = statistics.median(t for t, _ in times["plain causal"])
        plain_kernel = statistics.median(k for _, k in times["plain causal"])
        for mode in modes:
            step = statistics.median(t for t, _ in times[mode])
            kernel = statistics.median(k for _, k in times[mode])
            print(
                f"  {attention:9s} {mode:16s} step {step * 1e3:7.1f} ms ({step / plain_step:.2f}x)   "
                f"attention kernel fwd {kernel * 1e3:6.1f} ms ({kernel / plain_kernel:.2f}x)"
            )


if __name__ == "__main__":
    main()
