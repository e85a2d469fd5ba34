"""`python -m model.summary [--size 125m] [--seq-len N] [--dtype bf16]`: every attention preset at one size.

For each preset of conf/attention/ at the size of conf/model/<size>.yaml: parameters split into embeddings,
LM head, attention (q, k, v, o, lambda), FFN and norms; training FLOPs per token (model/flops.py, at
--seq-len, default the size's max_seq_len); KV-cache bytes per token (all layers, --dtype); and the ratios of
attention parameters, total parameters and FLOPs to `baseline` (h heads) and `baseline_2h` (2h heads).

The blog's "~25% fewer attention parameters than the 2h baseline": DIFF V2 keeps the 2h baseline's query
width and its K/V and halves o_proj, so it saves 25% of the Q + O weights; with K/V counted the saving is
1/4 * (Q + O) / (Q + K + V + O) of the attention parameters: 25% only as h_kv / h -> 0 (20% at 125m, where
h_kv = h / 2; 22% at 350m, where h_kv = h / 4).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .config import ModelConfig
from .flops import flops_per_token
from .transformer import Transformer

ORDER = ("baseline", "baseline_1p5h", "baseline_2h", "diff_v1", "diff_v2")
"""Presets shown first, in this order; the ablations follow by name."""
ATTENTION_PARTS = ("q", "k", "v", "o", "lambda")
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass
class Summary:
    """One preset at one size."""

    preset: str
    params: dict[str, int]
    """embed, head, q, k, v, o, lambda, attention (their sum), ffn, norms, total."""
    flops_per_token: float
    kv_bytes_per_token: int


def part_of(name: str) -> str:
    """Which column a parameter (by its module path) is counted in."""
    if name.startswith("tok_embeddings."):
        return "embed"
    if name.startswith("output."):
        return "head"
    if ".attention." in name:
        leaf = name.split(".attention.", 1)[1]
        if leaf.startswith(("q_proj", "k_proj", "v_proj", "o_proj")):
            return leaf[0]
        if leaf.startswith("lambda"):  # DIFF V2's lambda_proj, V1's lambda_q1 .. lambda_k2
            return "lambda"
        if leaf.startswith("subln"):  # DIFF V1's per-head RMSNorm
            return "norms"
    if ".feed_forward." in name:
        return "ffn"
    if "norm" in name:
        return "norms"
    raise ValueError(f"parameter {name!r} fits no column of the summary")


def summarize_model(preset: str, cfg: ModelConfig, seq_len: int, dtype_bytes: int) -> Summary:
    """Counts on the meta device: no memory, any size."""
    with torch.device("meta"):
        model = Transformer(cfg)
    params = dict.fromkeys(("embed", "head", *ATTENTION_PARTS, "ffn", "norms"), 0)
    for name, p in model.named_parameters():
        params[part_of(name)] += p.numel()
    params["attention"] = sum(params[k] for k in ATTENTION_PARTS)
    params["total"] = model.num_params()
    caches = model.new_kv_caches(batch=1, max_len=1)
    kv = sum(c.k.numel() + c.v.numel() for c in caches) * dtype_bytes
    return Summary(preset, params, flops_per_token(cfg, seq_len), kv)


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.3f}" if reference else "-"


def format_summaries(summaries: Sequence[Summary]) -> str:
    """A text table; ratios against the baseline and baseline_2h rows when present."""
    by_name = {s.preset: s for s in summaries}
    refs = [by_name.get("baseline"), by_name.get("baseline_2h")]
    header = ["preset", "embed", "head", *ATTENTION_PARTS, "attn", "ffn", "norms", "total"]
    header += ["attn/base", "attn/2h", "total/base", "total/2h", "FLOPs/tok", "flops/base", "KV_B/tok"]
    rows = []
    for s in summaries:
        p = s.params
        row = [s.preset, f"{p['embed']:,}", f"{p['head']:,}" if p["head"] else "tied"]
        row += [f"{p[k]:,}" for k in (*ATTENTION_PARTS, "attention", "ffn")]
        row += [f"{p['norms']:,}", f"{p['total']:,}"]
        for key in ("attention", "total"):
            row += [_ratio(p[key], r.params[key]) if r else "-" for r in refs]
        row += [_si(s.flops_per_token)]
        row += [_ratio(s.flops_per_token, refs[0].flops_per_token) if refs[0] else "-"]
        row += [f"{s.kv_bytes_per_token:,}"]
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="125m", help="a conf/model preset (tiny, mini, 125m, 350m, ...)")
    parser.add_argument(
        "--seq-len", type=int, default=None, help="for FLOPs (default: the size's max_seq_len)"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPE_BYTES), default="bf16", help="KV-cache element type")
    args = parser.parse_args(argv)
    # The command composes each preset from conf/ as `python -m train` would; model/ itself needs no conf
    # (tests/test_layers.py names this function as a command).
    from conf import attention_presets

    try:
        composed = attention_presets(args.size)
    except FileNotFoundError as exc:
        print(f"model.summary: error: {exc}", file=sys.stderr)
        return 2
    configs = {n: composed[n] for n in ORDER if n in composed} | composed
    any_cfg = next(iter(configs.values()))
    seq_len = args.seq_len or any_cfg.max_seq_len
    summaries = [summarize_model(n, c, seq_len, DTYPE_BYTES[args.dtype]) for n, c in configs.items()]
    print(
        f"model={args.size}: D={any_cfg.d_model} layers={any_cfg.n_layers} h={any_cfg.n_heads} "
        f"h_kv={any_cfg.n_kv_heads} d={any_cfg.head_dim}; FLOPs at seq_len {seq_len}; "
        f"KV cache in {args.dtype}"
    )
    print(format_summaries(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
