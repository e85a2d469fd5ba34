"""`python -m model.init_scale --out <sweep>/init_scale.json <run dir>/config.yaml ...`: how loud each
attention variant is at initialisation: the RMS of the attention sublayer's output (after o_proj, what it adds
to the residual stream), mean over layers, next to the token embedding's RMS.

Measured on the runs' own model configs (one per model.variant, seed 0, random tokens) and written as JSON
(variant -> attention_rms, embedding_rms) that analysis.results' lr_stability section reads. DIFF V1's
per-head RMSNorm starts at weight 1 and normalises each head's output to RMS ~1 before (1 - lambda_init) and
o_proj, where the baseline's and DIFF V2's heads output an average of values that are themselves
~init_std * sqrt(D) times the (small) embedding. So V1 writes a far larger update into a residual stream
that holds ~init_std.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from .config import ModelConfig
from .transformer import Transformer

SEQUENCES, TOKENS = 8, 128


def model_config_of_run(config_yaml: Path) -> ModelConfig:
    """The ModelConfig of a run's resolved config.yaml (its `model` section; other keys are ignored)."""
    section = (yaml.safe_load(config_yaml.read_text()) or {}).get("model")
    if not isinstance(section, dict):
        raise ValueError(f"{config_yaml}: has no `model` section (expected a run dir's resolved config.yaml)")
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in section.items() if k in names})


def attention_output_rms(cfg: ModelConfig) -> tuple[float, float]:
    """(attention output RMS mean over layers, token embedding RMS) of `cfg`'s model at init (seed 0)."""
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    tokens = torch.randint(0, cfg.vocab_size, (SEQUENCES, min(TOKENS, cfg.max_seq_len)))
    rms: list[torch.Tensor] = []
    hooks = [
        block.attention.register_forward_hook(lambda m, a, out: rms.append(out.float().pow(2).mean().sqrt()))
        for block in model.layers
    ]
    with torch.no_grad():
        model(tokens)
        embedding = model.tok_embeddings(tokens).float().pow(2).mean().sqrt().item()
    for hook in hooks:
        hook.remove()
    return torch.stack(rms).mean().item(), embedding


def measure(configs: Sequence[Path]) -> dict[str, dict[str, float]]:
    """variant -> {attention_rms, embedding_rms}, measured on the first config of each model.variant."""
    by_variant: dict[str, ModelConfig] = {}
    for path in configs:
        cfg = model_config_of_run(path)
        by_variant.setdefault(cfg.variant, cfg)
    measured = {}
    for variant, cfg in by_variant.items():
        out, embedding = attention_output_rms(cfg)
        measured[variant] = {"attention_rms": out, "embedding_rms": embedding}
    return measured


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.init_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "configs", nargs="+", help="runs' config.yaml (e.g. runs/results/lr_stability/*/config.yaml)"
    )
    parser.add_argument("--out", required=True, help="the JSON to write (the sweep dir's init_scale.json)")
    args = parser.parse_args(argv)
    try:
        measured = measure([Path(c) for c in args.configs])
    except (FileNotFoundError, ValueError) as exc:
        print(f"model.init_scale: error: {exc}", file=sys.stderr)
        return 2
    Path(args.out).write_text(json.dumps(measured, indent=2) + "\n")
    print(f"wrote {args.out} ({', '.join(measured)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
