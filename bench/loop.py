"""Framework overhead: tokens/s of `train`'s loop against a minimal hand-written loop, same run, same work.

Both train the same model on the same TokenLoader batches with the same AdamW; the minimal loop is
forward, loss, backward, clip, step and nothing else. Both time steps 2..STEPS (step 1 warms up), in
ROUNDS alternating rounds; the ratio is of the medians, so a busy shared machine skews both alike.
Goal: framework / minimal >= 0.95.

    python -m bench.loop [hydra overrides, e.g. model=125m trainer.seq_len=1024]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from bench.config import compose_run_config
from conf import RunConfig
from data import TokenLoader, ensure_dataset
from data.spec import LoaderSpec
from model import Transformer
from train.run import run_training

STEPS = 20
"""Steps per round; the framework's tokens/s window covers steps 2..STEPS, and so does the minimal loop's."""
ROUNDS = 3
DEFAULTS = [
    "data=stdlib_small",
    "trainer.seq_len=128",
    "trainer.micro_batch=8",
    "trainer.global_batch_tokens=1024",
    "optim.warmup_steps=5",
    "checkpoint.keep_last=1",
    "wandb.mode=disabled",
    "checkpoint.interval=0",
    "checkpoint.export_safetensors=false",
    "trainer.eval_interval=0",
    "trainer.eval_batches=1",
    "trainer.diag_interval=0",
]


def compose_config(overrides: list[str], run_dir: str) -> RunConfig:
    return compose_run_config(
        [
            *DEFAULTS,
            f"trainer.max_steps={STEPS}",
            f"trainer.log_interval={STEPS}",
            f"run.dir={run_dir}",
            "checkpoint.resume=none",
            *overrides,
        ]
    )


def minimal_loop(cfg: RunConfig) -> float:
    """tokens/s of the plainest loop that does the same work."""
    t = cfg.trainer
    torch.manual_seed(cfg.run.seed)
    model = Transformer(cfg.model)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2), weight_decay=0.1
    )
    loader = TokenLoader(cfg.data.dir, LoaderSpec("train", t.seq_len, t.micro_batch, cfg.run.seed))
    accum = t.global_batch_tokens // (t.seq_len * t.micro_batch)
    start = 0.0
    for step in range(STEPS):
        if step == 1:
            start = time.perf_counter()
        for _ in range(accum):
            inputs, targets = next(loader)
            loss = F.cross_entropy(model(inputs).float().flatten(0, 1), targets.flatten())
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
    loader.close()
    return (STEPS - 1) * t.global_batch_tokens / (time.perf_counter() - start)


def framework_loop(cfg: RunConfig) -> float:
    """tokens/s the framework itself reports over the same steps (its timing window excludes eval)."""
    config_yaml = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    return run_training(cfg, config_yaml).tokens_per_s


def main(argv: list[str] | None = None) -> None:
    overrides = list(argv if argv is not None else sys.argv[1:])
    minimal, framework = [], []
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        cfg = compose_config(overrides, tmp)
        ensure_dataset(cfg.data)
        print(
            f"model {cfg.model.name}/{cfg.model.attention}, {cfg.trainer.global_batch_tokens} tokens/step "
            f"(micro_batch {cfg.trainer.micro_batch} x seq_len {cfg.trainer.seq_len}), {ROUNDS} rounds of "
            f"{STEPS} steps, {torch.get_num_threads()} threads",
            flush=True,
        )
        for i in range(ROUNDS):
            minimal.append(minimal_loop(cfg))
            framework.append(framework_loop(compose_config(overrides, f"{tmp}/round{i}")))
    base, ours = statistics.median(minimal), statistics.median(framework)
    print(f"minimal loop:   {base:10.0f} tokens/s  (rounds: {', '.join(f'{v:.0f}' for v in minimal)})")
    print(f"framework loop: {ours:10.0f} tokens/s  (rounds: {', '.join(f'{v:.0f}' for v in framework)})")
    print(f"ratio framework/minimal: {ours / base:.3f}  (goal >= 0.95)")


if __name__ == "__main__":
    main()
