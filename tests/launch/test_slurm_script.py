"""The sbatch script submitit would submit, built here without a cluster, and the requeue hand-off."""

from __future__ import annotations

from pathlib import Path

from launch.config import LaunchConfig, SlurmConfig
from launch.slurm import TorchrunJob, render_sbatch


def slurm_cfg() -> LaunchConfig:
    slurm = SlurmConfig(
        partition="gpu",
        account="proj",
        qos="high",
        time_min=90,
        gpus_per_node=4,
        cpus_per_task=32,
        mem_gb=200,
        signal_delay_s=180,
        setup=["module load cuda/12.4"],
    )
    return LaunchConfig(kind="slurm", nnodes=2, slurm=slurm)


def test_sbatch_script_carries_the_requested_resources(tmp_path: Path) -> None:
    script = render_sbatch(slurm_cfg(), "tiny-diff_v2", tmp_path / "slurm")
    directives = {line for line in script.splitlines() if line.startswith("#SBATCH")}
    assert {
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --qos=high",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=32",
        "#SBATCH --mem=200GB",
        "#SBATCH --time=90",
        "#SBATCH --job-name=tiny-diff_v2",
        "#SBATCH --signal=USR1@180",
    } <= directives
    assert "#SBATCH --signal=USR2@180" not in directives  # submitit's default signal is replaced by ours


def test_sbatch_script_sets_the_signal_then_runs_one_submitit_task_per_node(tmp_path: Path) -> None:
    script = render_sbatch(slurm_cfg(), "job", tmp_path / "slurm").splitlines()
    setup = script.index("export SUBMITIT_PREEMPT_SIGNAL=USR1")
    assert script[setup + 1] == "module load cuda/12.4"
    srun = next(i for i, line in enumerate(script) if line.startswith("srun "))
    assert (
        srun > setup
        and "-m submitit.core._submit" in script[srun]
        and str(tmp_path / "slurm") in script[srun]
    )


def test_optional_resources_are_left_to_the_cluster(tmp_path: Path) -> None:
    cfg = LaunchConfig(kind="slurm", slurm=SlurmConfig(partition="p", gpus_per_node=0))
    script = render_sbatch(cfg, "job", tmp_path)
    for option in ("--account", "--qos", "--mem", "--gpus-per-node", "--constraint"):
        assert f"#SBATCH {option}" not in script


def test_requeued_job_resumes_from_the_latest_checkpoint() -> None:
    job = TorchrunJob(slurm_cfg(), ["optim.lr=1e-3", "checkpoint.resume=none"], "/runs/x", "x", True)
    delayed = job.checkpoint()
    requeued = delayed.function
    assert isinstance(requeued, TorchrunJob)
    assert requeued.overrides == ["optim.lr=1e-3", "checkpoint.resume=auto"]
    assert (requeued.run_dir, requeued.run_name) == ("/runs/x", "x")
