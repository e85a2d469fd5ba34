"""Real jobs for the end-to-end tests: `python -m train` and torchrun subprocesses on a tiny model.

The small stdlib corpus is prepared once per session into a tmp DIFFV2_DATA (tests/conftest.py); the runs
several tests compare against (a straight 12-step FSDP run, one stopped at step 6) are made once and copied
before reuse.
"""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from train.metrics import METRICS_FILE, read_metrics

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240

TINY_MODEL = ["model=micro"]
"""conf/model/micro.yaml: a 2-layer model small enough for many multi-process runs on 2 cores."""

TINY = [
    "data=stdlib_small",
    *TINY_MODEL,
    "model.vocab_size=${data.tokenizer.vocab_size}",
    "trainer.seq_len=32",
    "trainer.micro_batch=2",
    "trainer.global_batch_tokens=128",
    "trainer.max_steps=12",
    "trainer.log_interval=1",
    "trainer.eval_interval=6",
    "trainer.eval_batches=2",
    "trainer.diag_interval=6",
    "optim.warmup_steps=2",
    "checkpoint.interval=3",
    "wandb.mode=disabled",
]
"""12 steps of 128 tokens; at 2 ranks x micro_batch 2 x seq_len 32 one micro-step makes the global batch."""


def _command(
    run_dir: Path, *overrides: str, nproc: int = 0, torchrun_args: tuple[str, ...] = ()
) -> list[str]:
    """`python -m train` (nproc=0) or torchrun with nproc ranks, on the tiny config plus overrides."""
    if nproc:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
        ]
        cmd = [*launcher, *torchrun_args, "-m", "train"]
    else:
        cmd = [sys.executable, "-m", "train"]
    return [*cmd, *TINY, f"run.dir={run_dir}", *overrides]


def _train(
    run_dir: Path,
    *overrides: str,
    nproc: int = 0,
    torchrun_args: tuple[str, ...] = (),
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Runs one job to completion; with check, a non-zero exit fails the test showing the job's output."""
    cmd = _command(run_dir, *overrides, nproc=nproc, torchrun_args=torchrun_args)
    # One intra-op thread, as torchrun gives each of its workers: the tiny model's matmuls only contend.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Own session: on a timeout the whole job (torchrun and its workers) is killed, not just the launcher.
    with subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as popen:
        try:
            stdout, stderr = popen.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            stdout, stderr = popen.communicate()
            report = f"{' '.join(cmd)}\ntimed out after {TIMEOUT_S} s\n{stdout[-3000:]}\n{stderr[-5000:]}"
            raise AssertionError(report) from None
    proc = subprocess.CompletedProcess(cmd, popen.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def _in_process(run_dir: Path | None, *overrides: str) -> subprocess.CompletedProcess:
    """`python -m train` on the tiny config, in this process (no interpreter start-up, no torch import):
    for jobs that need no process of their own. run_dir=None leaves run.dir to its default (runs/<name>)."""
    argv = [
        a for a in _command(run_dir or Path("."), *overrides)[3:] if run_dir or not a.startswith("run.dir=")
    ]
    out, err = io.StringIO(), io.StringIO()
    saved_argv, sys.argv = sys.argv, ["train", *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            # As `python -m train` runs it: Hydra finds conf/ relative to a __main__ script only.
            runpy.run_module("train", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved_argv
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def _metrics(run_dir: Path) -> list[dict]:
    return read_metrics(run_dir / METRICS_FILE)


def _train_rows(run_dir: Path) -> dict[int, dict]:
    """step -> the training row logged at that step."""
    return {row["step"]: row for row in _metrics(run_dir) if "loss" in row and "event" not in row}


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


class Jobs:
    """The helpers above, handed to tests as the `jobs` fixture (test modules cannot import conftest)."""

    repo = REPO
    tiny_model = TINY_MODEL
    tiny = TINY
    command = staticmethod(_command)
    train = staticmethod(_train)
    in_process = staticmethod(_in_process)
    metrics = staticmethod(_metrics)
    train_rows = staticmethod(_train_rows)
    copy_run = staticmethod(_copy_run)


@pytest.fixture(scope="session")
def jobs() -> type[Jobs]:
    return Jobs


@pytest.fixture(scope="session")
def fsdp_straight(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """12 uninterrupted steps, 2 FSDP ranks, wandb offline: the reference run."""
    run_dir = tmp_path_factory.mktemp("runs") / "straight"
    _train(run_dir, "parallel=fsdp", "wandb.mode=offline", "wandb.tags=[test]", nproc=2)
    return run_dir


@pytest.fixture(scope="session")
def fsdp_stopped_at_6(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """The same job stopped after step 6 (schedule still for 12), checkpoints written in the background."""
    run_dir = tmp_path_factory.mktemp("runs") / "stopped"
    _train(run_dir, "parallel=fsdp", "trainer.stop_at_step=6", "checkpoint.async_save=true", nproc=2)
    return run_dir


@pytest.fixture(scope="session")
def saved_6_steps(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """6 steps of tiny diff_v2 in this process: checkpoints at steps 3 and 6, metrics for steps 1-6 (copy
    it before changing anything)."""
    run_dir = tmp_path_factory.mktemp("runs") / "saved_6_steps"
    proc = _in_process(run_dir, "trainer.max_steps=6", "trainer.eval_interval=0", "trainer.diag_interval=0")
    assert proc.returncode == 0, proc.stderr
    return run_dir
