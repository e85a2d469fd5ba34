"""Workers do not outlive their torchrun: killed by any signal, SIGKILL included, its ranks checkpoint and
exit.

Real processes: torchrun with 2 gloo ranks, killed from here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from launch.process import child_pids

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("data_root")]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def wait_for_rows(run_dir: Path, rows: int, job: subprocess.Popen, timeout_s: float = 120) -> None:
    log, deadline = run_dir / "metrics.jsonl", time.monotonic() + timeout_s
    while not (log.exists() and len(log.read_text().splitlines()) >= rows):
        assert time.monotonic() < deadline and job.poll() is None, "the job logged no steps"
        time.sleep(0.2)


def test_workers_checkpoint_and_exit_when_torchrun_is_killed(tmp_path, jobs):
    """SIGKILL: no handler can run in torchrun (SIGUSR1's default action, the issue's case, ends the same)."""
    run_dir = tmp_path / "orphaned"
    cmd = jobs.command(
        run_dir,
        "parallel=ddp",
        "trainer.max_steps=100000",
        "checkpoint.interval=0",
        "trainer.eval_interval=0",
        nproc=2,
    )
    with (tmp_path / "out.log").open("w") as out:
        torchrun = subprocess.Popen(cmd, cwd=jobs.repo, stdout=out, stderr=subprocess.STDOUT)
    workers: list[int] = []
    try:
        wait_for_rows(run_dir, 3, torchrun)
        workers = child_pids(torchrun.pid)
        assert len(workers) == 2
        torchrun.send_signal(signal.SIGKILL)
        assert torchrun.wait(timeout=30) == -signal.SIGKILL
        deadline = time.monotonic() + 60
        while any(map(alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(map(alive, workers)), (tmp_path / "out.log").read_text()[-3000:]
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    log = (tmp_path / "out.log").read_text()
    assert "is gone: checkpointing and stopping" in log and "stopped by launcher death" in log, log[-3000:]
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    last = max(row["step"] for row in jobs.metrics(run_dir))
    assert checkpoints == [f"step_{last:08d}"], (checkpoints, log[-3000:])
    assert (run_dir / "checkpoints" / checkpoints[0] / "checksums.json").is_file()
