"""launch=slurm with no cluster: the dry-run script from the CLI; a job run by submitit's local executor."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from train.metrics import read_metrics


def test_dry_run_prints_the_sbatch_script_for_the_composed_run(tmp_path: Path, run_launch) -> None:
    args = [
        "launch=slurm",
        "launch.slurm.partition=gpu",
        "launch.slurm.account=proj",
        "launch.nnodes=4",
        "launch.slurm.dry_run=true",
        "parallel=fsdp",
        "trainer.global_batch_tokens=131072",
        "run.name=big",
        f"run.dir={tmp_path}/big",
    ]
    proc = run_launch(args, None, tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    for directive in (
        "--partition=gpu",
        "--account=proj",
        "--nodes=4",
        "--gpus-per-node=8",
        "--job-name=big",
    ):
        assert f"#SBATCH {directive}" in lines
    task = next(line for line in lines if line.startswith("# task:"))
    assert "parallel=fsdp" in task and f"run.dir={tmp_path}/big" in task and "launch." not in task
    assert not (tmp_path / "big" / "slurm").exists()  # nothing submitted


@pytest.mark.slow
def test_local_executor_runs_submitted_sweep_jobs_to_completion(
    data_env, tmp_path: Path, tiny, run_launch, table_rows
) -> None:
    """launch=slurm sweeps submit every trial, then wait for all; submitit's local executor runs them here."""
    sweep_dir = tmp_path / "sweeps" / "via_submitit"
    args = [
        "--multirun",
        *tiny,
        "launch=slurm",
        "launch.slurm.executor=local",
        "launch.nproc_per_node=1",
        "attention=baseline,diff_v2",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    proc = run_launch(args, data_env, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Both were submitted before either was waited on.
    submitted = [
        i for i, line in enumerate(proc.stdout.splitlines()) if line.startswith("[launch] submitted")
    ]
    assert len(submitted) == 2 and submitted[1] == submitted[0] + 1
    for name in ("0-attention-baseline", "1-attention-diff_v2"):
        run_dir = sweep_dir / name
        assert any(
            r.get("event") == "end" and r["step"] == 4 for r in read_metrics(run_dir / "metrics.jsonl")
        )
        assert json.loads((run_dir / "launch.json").read_text())["exit_code"] == 0
        (log,) = (run_dir / "slurm").glob("*_0_log.out")  # the submitit task's output: our agent ran there
        assert "torchrun exited with code 0" in log.read_text()
    assert {name: cells[0] for name, cells in table_rows(proc.stdout).items()} == {
        "0-attention-baseline": "4",
        "1-attention-diff_v2": "4",
    }


def descendants(pid: int) -> list[int]:
    from launch.process import child_pids

    found = child_pids(pid)
    return found + [d for child in found for d in descendants(child)]


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.mark.slow
def test_preempted_job_checkpoints_requeues_and_resumes(
    data_env, tmp_path: Path, tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SLURM's pre-emption signal, delivered to the task as SLURM would: the ranks checkpoint, submitit
    requeues, the job resumes from that checkpoint and finishes."""
    from conf import compose
    from launch.command import train_overrides
    from launch.slurm import submit

    for key in ("DIFFV2_DATA", "WANDB_SILENT", "OMP_NUM_THREADS"):
        monkeypatch.setenv(key, data_env[key])  # the job's processes inherit our environment
    run_dir = tmp_path / "preempted"
    overrides = [*tiny, "trainer.max_steps=40", "trainer.log_interval=1", f"run.dir={run_dir}"]
    launch = ["launch=slurm", "launch.slurm.executor=local", "launch.nproc_per_node=1"]
    cfg = compose([*overrides, *launch])
    job = submit(cfg, train_overrides(overrides))
    assert job is not None
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not any("loss" in r for r in read_metrics(metrics)):
        assert time.monotonic() < deadline and not job.job.done(), "training never started"
        time.sleep(0.2)
    (task,) = [p for p in descendants(job.job._process.pid) if b"submitit.core._submit" in cmdline(p)]
    os.kill(task, signal.SIGUSR1)
    assert job.wait() == 0
    (log,) = (run_dir / "slurm").glob("*_0_log.out")
    text = log.read_text()
    assert "[launch] ranks stopped (torchrun exit code 0)" in text, text[
        -3000:
    ]  # checkpointed, exited cleanly
    assert "Requeued job" in text
    resumed = re.search(r"resumed from \S+/step_(\d+) at step (\d+)", text)
    assert resumed and 0 < int(resumed.group(2)) < 40 and int(resumed.group(1)) == int(resumed.group(2))
    assert any(r.get("event") == "end" and r.get("step") == 40 for r in read_metrics(metrics))
