"""launch=slurm with no cluster: the dry-run script from the CLI; a job run by submitit's local executor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch.metrics import read_metrics


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
def test_local_executor_runs_the_slurm_job_to_completion(data_env, tmp_path: Path, tiny, run_launch) -> None:
    run_dir = tmp_path / "runs" / "via_submitit"
    args = [
        *tiny,
        "launch=slurm",
        "launch.slurm.executor=local",
        "launch.nproc_per_node=1",
        f"run.dir={run_dir}",
    ]
    proc = run_launch(args, data_env, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "submitted" in proc.stdout
    assert any(r.get("event") == "end" and r["step"] == 4 for r in read_metrics(run_dir / "metrics.jsonl"))
    assert json.loads((run_dir / "launch.json").read_text())["exit_code"] == 0
    (log,) = (run_dir / "slurm").glob("*_0_log.out")  # the submitit task's output: our agent ran there
    assert "torchrun exited with code 0" in log.read_text()
