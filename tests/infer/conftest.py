"""One short training run (the default job's shape, a few steps of a small model on stdlib_small) whose
artefacts (run dir with exported weights and tokenizer, checkpoints) every infer test reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240
RUN = [
    "data=stdlib_small",
    "model.d_model=64",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.head_dim=16",
    "model.ffn_hidden=128",
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


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run dir of a finished `python -m train` job (stdlib_small prepared in a tmp DIFFV2_DATA)."""
    root = tmp_path_factory.mktemp("infer")
    env = {**os.environ, "DIFFV2_DATA": str(root / "data")}
    run_dir = root / "run"
    cmd = [sys.executable, "-m", "train", *RUN, f"run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"{' '.join(cmd)}\nexit {proc.returncode}\n{proc.stderr[-4000:]}"
    return run_dir
