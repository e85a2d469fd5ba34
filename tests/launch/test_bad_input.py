"""Bad input stops `python -m launch` with a message naming the field, before any torchrun starts."""

from __future__ import annotations

from pathlib import Path

import pytest


def assert_refused(proc, *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout
    for needle in needles:
        assert needle in proc.stderr, proc.stderr[-2000:]
    assert "[launch] node" not in proc.stdout  # no torchrun agent was started


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["launch.foo=1"], ["launch.foo"]),
        (["launch=bogus"], ["launch/bogus", "multinode"]),
        (["launch.nproc_per_node=many"], ["launch.nproc_per_node='many'", "positive integer or 'auto'"]),
        (["launch.kind=k8s"], ["launch.kind='k8s'"]),
        (["launch.nnodes=2"], ["launch.nnodes=2", "launch=multinode"]),
        (["launch=slurm"], ["launch.slurm.partition is required"]),
        (["launch=slurm", "launch.slurm.partition=gpu"], ["launch.slurm.executor=slurm needs sbatch"]),
        (
            ["launch=slurm", "launch.slurm.partition=gpu", "launch.slurm.dry_run=true", "parallel=ddp"]
            + ["launch.slurm.gpus_per_node=2", "launch.nproc_per_node=4"],
            ["launch.nproc_per_node=4", "launch.slurm.gpus_per_node requests 2 GPU"],
        ),
        (["+experiment=lr_stability"], ["add --multirun"]),
        (["model.n_heads=3"], ["n_heads"]),
    ],
    ids=[
        "unknown-option",
        "unknown-launch-preset",
        "nproc-not-a-number",
        "unknown-kind",
        "local-with-two-nodes",
        "slurm-without-partition",
        "slurm-without-sbatch",
        "nproc-above-gpus",
        "experiment-without-multirun",
        "bad-train-value",
    ],
)
def test_bad_launch_input_is_refused_naming_the_field(
    args: list[str], needles: list[str], tmp_path: Path, run_launch
) -> None:
    assert_refused(run_launch([*args, f"run.dir={tmp_path}/run"], None, tmp_path, timeout=60), *needles)
    assert not (tmp_path / "run" / "launch.json").exists()


def test_a_sweep_value_of_the_wrong_type_stops_the_whole_sweep_first(tmp_path: Path, run_launch) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = run_launch(
        ["--multirun", "optim.lr=1e-3,fast", f"hydra.sweep.dir={sweep_dir}"], None, tmp_path, 60
    )
    assert_refused(proc, "optim.lr", "fast")
    assert not sweep_dir.exists() or not any(p.is_dir() for p in sweep_dir.iterdir())
