"""One short training run (the default job's shape, a few steps of a small model on stdlib_small) whose
artefacts (run dir with exported weights and tokenizer, checkpoints) every infer test reads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240
RUN = [
    "data=stdlib_small",
    "model=micro",
    "model.max_seq_len=64",
    "model.vocab_size=${data.tokenizer.vocab_size}",
    "trainer.seq_len=64",
    "trainer.micro_batch=2",
    "trainer.global_batch_tokens=128",
    "trainer.max_steps=4",
    "trainer.eval_interval=4",
    "trainer.eval_batches=1",
    "optim.warmup_steps=1",
    "checkpoint.interval=4",
    "wandb.mode=disabled",
]
"""`python -m train` overrides: DIFF V2 (the default attention), 4 steps of 128 tokens, a checkpoint at 4."""


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """The run dir of a finished `python -m train` job (on the session's stdlib_small: tests/conftest.py)."""
    root = tmp_path_factory.mktemp("infer")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # DIFFV2_DATA: data_root
    run_dir = root / "run"
    cmd = [sys.executable, "-m", "train", *RUN, f"run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"{' '.join(cmd)}\nexit {proc.returncode}\n{proc.stderr[-4000:]}"
    return run_dir


@pytest.fixture(scope="session")
def wide_vocab_export(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export dir of a model whose vocab_size (8192) exceeds the run's tokenizer (2048 ids of
    data=stdlib_small), which python -m train accepts: the untrained output rows beyond the tokenizer are
    scaled to hold the largest logits, so any decoding that does not mask them draws ids it cannot decode."""
    from data.tokenizer import load_bpe
    from model import ModelConfig, Transformer
    from train.export import save_weights, seal_export

    export = tmp_path_factory.mktemp("wide-vocab")
    enc = load_bpe(trained_run / "tokenizer")
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=8192, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, ffn_hidden=32,
        max_seq_len=32,
    )  # fmt: skip
    model = Transformer(cfg)
    with torch.no_grad():
        model.output.weight[enc.n_vocab :] *= 50
    save_weights(model.state_dict(), cfg, export)
    for name in ("tokenizer.tiktoken", "tokenizer.json"):
        shutil.copy(trained_run / name, export / name)
    seal_export(export)
    return export
