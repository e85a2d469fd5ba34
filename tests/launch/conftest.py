"""Shared pieces of the launch tests: a tiny training config, a prepared dataset, and a CLI runner."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conf import register_configs

REPO = Path(__file__).resolve().parents[2]

# A 2-layer, 64-wide model on 32-token sequences for 4 steps: seconds per run on 2 CPU cores. The global batch
# (32 tokens x 2 sequences x 4) divides into 1 or 2 ranks without remainder.
TINY = [
    "model.d_model=64",
    "model.n_layers=2",
    "model.ffn_hidden=128",
    "trainer.seq_len=32",
    "trainer.micro_batch=2",
    "trainer.global_batch_tokens=256",
    "trainer.max_steps=4",
    "trainer.log_interval=1",
    "trainer.eval_interval=0",
    "trainer.eval_batches=1",
    "trainer.diag_interval=2",
    "optim.warmup_steps=1",
    "checkpoint.interval=0",
    "data=stdlib_small",
    "wandb.mode=disabled",
    "checkpoint.export_safetensors=false",
]


@pytest.fixture(scope="session")
def data_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment whose DIFFV2_DATA holds data=stdlib_small, prepared once per test session."""
    root = tmp_path_factory.mktemp("diffv2_data")
    env = {**os.environ, "DIFFV2_DATA": str(root), "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "data.prepare", "data=stdlib_small"],
        cwd=REPO,
        env=env,
        check=True,
        timeout=300,
    )
    return env


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)


def _run_launch(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 240
) -> subprocess.CompletedProcess:
    """`python -m launch <args>` in `cwd`, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "launch", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def run_launch():
    return _run_launch


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _table_rows(stdout: str) -> dict[str, list[str]]:
    """The sweep summary table printed last: trial name -> its cells (the exit code last)."""
    lines = stdout[stdout.rindex("\ntrial ") :].strip().splitlines()[2:]
    return {cells[0]: cells[1:] for cells in (line.split() for line in lines) if len(cells) == 7}


@pytest.fixture
def table_rows():
    return _table_rows


@pytest.fixture
def hydra_conf():
    """Hydra's compose API over the repo's conf/, as `python -m launch` composes it."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        yield
    GlobalHydra.instance().clear()
