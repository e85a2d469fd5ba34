"""Shared pieces of the launch tests: a tiny training config, a prepared dataset, and a CLI runner."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# model=micro (2 layers, 64 wide) on 32-token sequences for 4 steps: seconds per run on 2 CPU cores. The
# global batch (32 tokens x 2 sequences x 4) divides into 1 or 2 ranks without remainder.
TINY = [
    "model=micro",
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
    "launch.plan=false",  # the planner's gate has its own test (tests/train/test_plan.py)
]


@pytest.fixture(scope="session")
def data_env(data_root: Path) -> dict[str, str]:
    """An environment whose DIFFV2_DATA holds data=stdlib_small, prepared once (tests/conftest.py)."""
    return {**os.environ, "DIFFV2_DATA": str(data_root), "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}


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


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def launch_here(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """`python -m launch <args>` run in this process from `cwd`, for input refused before any torchrun starts
    (a subprocess would only add interpreter start-up); returns its exit code and output."""
    from launch import app, sweep
    from launch.__main__ import main

    def run(args: list[str], cwd: Path) -> CliResult:
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["launch", *args])
        monkeypatch.setattr(app, "EXIT_CODES", [])  # per-process state: one launch's codes only
        monkeypatch.setattr(sweep, "STATE", None)
        with pytest.raises(SystemExit) as exited:
            main()
        out = capsys.readouterr()
        return CliResult(exited.value.code, out.out, out.err)

    return run
