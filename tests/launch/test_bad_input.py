"""Bad input stops `python -m launch` with a message naming the field, before any torchrun starts.

The value checks run on the composed config (the same call the CLI makes); the CLI cases check the plumbing:
Hydra's own errors, our errors, a non-zero exit and no agent started. All run in this process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from conf import compose
from launch.nodes import LaunchError
from launch.validate import validate_config


def assert_refused(proc, *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout
    for needle in needles:
        assert needle in proc.stderr, proc.stderr[-2000:]
    assert "[launch] node" not in proc.stdout  # no torchrun agent was started


@pytest.mark.parametrize(
    ("overrides", "gpus", "message"),
    [
        (
            ["launch.nproc_per_node=many"],
            0,
            "launch.nproc_per_node='many': expected a positive integer or 'auto'",
        ),
        (["launch.nnodes=2"], 0, "launch.nnodes=2 with launch=local: use launch=multinode"),
        (["launch.preempt_signal=NOPE"], 0, "launch.preempt_signal='NOPE'"),
        (
            ["parallel=ddp", "launch.nproc_per_node=2"],
            1,
            "launch.nproc_per_node=2 asks for 2 ranks but this node",
        ),
        (["launch=slurm"], 0, "launch.slurm.partition is required"),
        (["launch=slurm", "launch.slurm.partition=gpu"], 0, "launch.slurm.executor=slurm needs sbatch"),
        (
            ["launch=slurm", "launch.slurm.partition=gpu", "launch.slurm.dry_run=true", "parallel=ddp"]
            + ["launch.slurm.gpus_per_node=2", "launch.nproc_per_node=4"],
            0,
            "launch.nproc_per_node=4 asks for 4 ranks but launch.slurm.gpus_per_node requests 2 GPU(s)",
        ),
        (
            ["launch=slurm", "launch.slurm.executor=local", "launch.nnodes=2"],
            0,
            "launch.slurm.executor=local",
        ),
        (["launch=slurm", "launch.slurm.executor=local", "launch.slurm.time_min=1"], 0, "signal_delay_s=120"),
        (["launch=multinode", "launch.nnodes=2", "launch.node_rank=5"], 0, "launch.node_rank=5"),
        (["launch.nproc_per_node=2"], 0, "= 1 ranks, but world_size=2"),
        (["model.n_heads=3"], 0, "n_heads"),
    ],
    ids=[
        "nproc-not-a-number",
        "local-with-two-nodes",
        "unknown-signal",
        "nproc-above-gpus-present",
        "slurm-without-partition",
        "slurm-without-sbatch",
        "nproc-above-slurm-gpus",
        "local-executor-two-nodes",
        "signal-after-time-limit",
        "node-rank-outside-job",
        "train-check-at-launch-world-size",
        "model-check",
    ],
)
def test_bad_value_is_refused_naming_the_field(overrides: list[str], gpus: int, message: str) -> None:
    with pytest.raises(ValueError) as err:
        validate_config(compose(overrides), gpus=gpus)
    assert message in str(err.value)
    if any(o.startswith("launch") for o in overrides) and "model" not in message:
        assert isinstance(err.value, LaunchError) or "world_size" in message


@pytest.mark.parametrize(
    ("override", "allowed"),
    [
        ("launch.kind=k8s", "expected one of [local, multinode, slurm]"),
        ("launch.rdzv_backend=zmq", "expected one of [c10d, static, etcd, etcd-v2]"),
        ("launch.slurm.executor=k8s", "expected one of [slurm, local]"),
    ],
)
def test_choice_outside_its_enum_is_refused_at_composition(override: str, allowed: str) -> None:
    # The allowed values sit beside the field (a StrEnum in launch/config.py); OmegaConf names them.
    with pytest.raises(ConfigCompositionException) as err:
        compose([override])
    assert override in str(err.value) and allowed in str(err.value.__cause__)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["launch.foo=1"], ["launch.foo", "LaunchConfig"]),
        (["launch=bogus"], ["launch/bogus", "multinode"]),
        (["launch=slurm"], ["config error: launch.slurm.partition is required"]),
        (["+experiment=lr_stability"], ["add --multirun"]),
        (["run.name=../escaped"], ["run.name='../escaped' must be a relative name without '..'"]),
        (["+trainer.max_step=4"], ["config error: trainer.max_step is not a config key"]),
    ],
    ids=[
        "unknown-option",
        "unknown-launch-preset",
        "slurm-without-partition",
        "experiment-without-multirun",
        "run-name-outside-runs",
        "unknown-key-added-with-plus",
    ],
)
def test_cli_refuses_bad_input_before_starting_torchrun(
    args: list[str], needles: list[str], tmp_path: Path, launch_here
) -> None:
    assert_refused(launch_here([*args, f"run.dir={tmp_path}/run"], tmp_path), *needles)
    assert not (tmp_path / "run").exists()  # nothing was started, nothing was written


def test_a_sweep_value_of_the_wrong_type_stops_the_whole_sweep_first(tmp_path: Path, launch_here) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = launch_here(["--multirun", "optim.lr=1e-3,fast", f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert_refused(proc, "optim.lr=fast", "could not be converted to Float", "full_key: optim.lr")
    assert not sweep_dir.exists() or not any(p.is_dir() for p in sweep_dir.iterdir())
