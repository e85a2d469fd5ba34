"""KV-cache generation tokens/s of DIFF V2 vs the baseline (same h_kv) and the 2h baseline: prefill, decode.

`python -m bench.decode [--size tiny] [--prompt 128] [--new 64] [--batches 1 8] [--repeats 3] [--json F]`

The blog's claim: DIFF V2 decodes as fast as the baseline, since its K/V cache is the baseline's (h_kv heads)
and decoding is bound by reading that cache; its extra query heads only raise arithmetic intensity. Each
variant is built at conf/model/<size>.yaml with its conf/attention preset and random weights (speed does not
depend on them); in each round every variant prefills the same prompt and then decodes greedily, one token
per forward, variants interleaved so machine noise hits all alike. Medians over rounds; tokens/s and ratios
to the baseline and the 2h baseline measured in the same run. On CUDA the default dtype is bf16.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from conf import attention_presets
from model import Transformer

VARIANTS = ("baseline", "baseline_2h", "diff_v2")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def timed_generate(
    model: Transformer, prompt: torch.Tensor, new_tokens: int
) -> tuple[torch.Tensor, float, float]:
    """Greedy generation as model.generate does it; returns (tokens [B, P + new], prefill s, decode s)."""
    device = prompt.device
    caches = model.new_kv_caches(prompt.shape[0], prompt.shape[1] + new_tokens)
    _sync(device)
    start = time.perf_counter()
    nxt = model(prompt, caches)[:, -1].argmax(-1)
    _sync(device)
    prefill = time.perf_counter() - start
    out = [nxt]
    start = time.perf_counter()
    for _ in range(new_tokens - 1):
        nxt = model(nxt[:, None], caches)[:, -1].argmax(-1)
        out.append(nxt)
    _sync(device)
    decode = time.perf_counter() - start
    return torch.cat([prompt, torch.stack(out, dim=1)], dim=1), prefill, decode


def bench(
    size: str,
    prompt_len: int,
    new_tokens: int,
    batch: int,
    repeats: int,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, dict[str, float]]:
    """Median prefill and decode tokens/s per variant at one batch size."""
    configs = attention_presets(size)
    models = {}
    for name in VARIANTS:
        torch.manual_seed(0)
        models[name] = Transformer(configs[name]).to(device=device, dtype=dtype).eval()
    vocab = configs["baseline"].vocab_size
    prompt = torch.randint(0, vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(0)).to(
        device
    )
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    for round_ in range(repeats + 1):  # round 0 warms up (allocator, kernels)
        for name, model in models.items():
            _, prefill, decode = timed_generate(model, prompt, new_tokens)
            if round_:
                times[name].append((prefill, decode))
    return {
        name: {
            "prefill_tokens_per_s": batch * prompt_len / statistics.median(p for p, _ in t),
            "decode_tokens_per_s": batch * (new_tokens - 1) / statistics.median(d for _, d in t),
        }
        for name, t in times.items()
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", help="conf/model preset (tiny on CPU, 125m on a GPU)")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens (prefill)")
    parser.add_argument("--new", type=int, default=64, help="generated tokens (decode)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
    parser.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, else fp32"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU intra-op threads (1: steadier when shared)"
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.new < 2:
        raise SystemExit(
            f"--new={args.new}: decoding needs at least 2 new tokens (the first comes from prefill)"
        )
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    torch.set_num_threads(args.threads)
    print(
        f"decode: model={args.size}, prompt {args.prompt}, {args.new} new, {device.type} {dtype_name}, "
        f"torch {torch.__version__}; median of {args.repeats}; ratio = tokens/s / baseline (h), / baseline_2h"
    )
    results = []
    for batch in args.batches:
        figures = bench(args.size, args.prompt, args.new, batch, args.repeats, device, DTYPES[dtype_name])
        print(f"\nbatch {batch}")
        for phase in ("prefill", "decode"):
            key = f"{phase}_tokens_per_s"
            base, two_h = figures["baseline"][key], figures["baseline_2h"][key]
            for name in VARIANTS:
                value = figures[name][key]
                print(
                    f"  {phase:<8} {name:<12} {value:12,.0f} tok/s   vs baseline {value / base:5.2f}"
                    f"   vs baseline_2h {value / two_h:5.2f}"
                )
                results.append({"batch": batch, "phase": phase, "attention": name, "tokens_per_s": value})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
