"""Training tokens/s of an MoE preset vs its dense twin at equal active parameters, measured in one run.

`python -m bench.moe [--moe micro_moe] [--dense micro] [--attention diff_v2] [--batch 8] [--seq-len 128]
[--repeats 7] [--warmup 2] [--device cpu]`. Each round times one forward + backward + AdamW step of every
model on the same random tokens, the models interleaved round by round so machine noise hits all alike; the
median is reported with its ratio to the dense model. The MoE runs twice: its experts on grouped matmuls
(torch._grouped_mm) and as a per-expert loop. conf/model/micro_moe and mini_moe are built so that the dense
presets micro and mini have the same active parameters (k x the expert width = the dense width), plus the
router: the ratio is the price of routing (router, sort, gather, scatter, small per-expert matmuls).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from omegaconf import OmegaConf

from conf import compose
from model import ModelConfig, Transformer


def model_config(size: str, attention: str) -> ModelConfig:
    return OmegaConf.to_object(compose([f"model={size}", f"attention={attention}"]).model)


def step_seconds(model: Transformer, opt: torch.optim.Optimizer, tokens: torch.Tensor) -> float:
    """One training step (forward, cross-entropy + auxiliary losses, backward, optimizer), synchronised."""
    start = time.perf_counter()
    logits, aux_losses = model(tokens[:, :-1], return_aux=True)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
    (loss + sum(aux_losses.values())).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if tokens.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.moe", description=__doc__.splitlines()[0])
    parser.add_argument("--moe", default="micro_moe", help="an MoE preset of conf/model")
    parser.add_argument("--dense", default="micro", help="the dense preset with its active parameters")
    parser.add_argument("--attention", default="diff_v2", help="a conf/attention preset, for both")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    moe_cfg, dense_cfg = model_config(args.moe, args.attention), model_config(args.dense, args.attention)
    configs = {
        f"{args.dense} (dense)": dense_cfg,
        f"{args.moe} grouped": dataclasses.replace(moe_cfg, moe_impl="grouped"),
        f"{args.moe} loop": dataclasses.replace(moe_cfg, moe_impl="loop"),
    }
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    models, optimizers = {}, {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        models[name] = Transformer(cfg).to(device=device, dtype=dtype)
        optimizers[name] = torch.optim.AdamW(models[name].parameters(), lr=1e-4)
    vocab = min(c.vocab_size for c in configs.values())
    tokens = torch.randint(0, vocab, (args.batch, args.seq_len + 1), device=device)
    times: dict[str, list[float]] = {name: [] for name in models}
    for round_ in range(args.warmup + args.repeats):
        for name, model in models.items():
            seconds = step_seconds(model, optimizers[name], tokens)
            if round_ >= args.warmup:
                times[name].append(seconds)
    n_tokens = args.batch * args.seq_len
    print(f"{args.attention} on {device} ({dtype}), {args.batch} x {args.seq_len} tokens per step")
    dense_rate = None
    for name, model in models.items():
        rate = n_tokens / statistics.median(times[name])
        dense_rate = dense_rate or rate
        print(
            f"{name:24s} total {model.num_params():>11,}  active {model.num_active_params():>11,}  "
            f"{rate:>10,.0f} tokens/s  {rate / dense_rate:.2f}x dense"
        )


if __name__ == "__main__":
    main()
