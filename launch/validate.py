"""Checks a composed config before any process starts: the launch settings, then the trainer's and model's own
value checks at the world size the launch will give them."""

from __future__ import annotations

import shutil
import signal

from omegaconf import DictConfig, OmegaConf

from launch.config import LaunchConfig
from launch.nodes import LaunchError, NodePlan, gpus_present, plan_node


def validate_launch(cfg: LaunchConfig, trainer_device: str, gpus: int) -> NodePlan:
    """Launch settings that Hydra's schema cannot check; returns the plan for this node (or, under
    launch=slurm, for one node of the job)."""
    if not hasattr(signal, f"SIG{cfg.preempt_signal}"):
        raise LaunchError(
            f"launch.preempt_signal={cfg.preempt_signal!r}: expected a signal name such as USR1"
        )
    if cfg.max_restarts < 0:
        raise LaunchError(f"launch.max_restarts={cfg.max_restarts}: expected >= 0")
    if cfg.kind == "local" and cfg.nnodes != 1:
        raise LaunchError(f"launch.nnodes={cfg.nnodes} with launch=local: use launch=multinode for >1 node")
    uses_cuda = trainer_device in ("auto", "cuda")
    source = "this node has"
    if cfg.kind == "slurm":
        validate_slurm(cfg)
        # The job's nodes are elsewhere: check against the GPUs requested there, not the ones here.
        gpus, source = cfg.slurm.gpus_per_node, "launch.slurm.gpus_per_node requests"
    return plan_node(cfg, gpus=gpus, uses_cuda=uses_cuda, env={}, gpus_source=source)


def validate_slurm(cfg: LaunchConfig) -> None:
    s = cfg.slurm
    if s.executor == "slurm":
        if not s.partition:
            raise LaunchError(
                "launch.slurm.partition is required with launch=slurm (e.g. launch.slurm.partition=gpu)"
            )
        if not s.dry_run and shutil.which("sbatch") is None:
            raise LaunchError(
                "launch.slurm.executor=slurm needs sbatch on PATH; run on a SLURM login node, or use "
                "launch.slurm.dry_run=true to print the script, or launch.slurm.executor=local to run here"
            )
    if s.executor == "local" and cfg.nnodes != 1:
        raise LaunchError(
            f"launch.nnodes={cfg.nnodes} with launch.slurm.executor=local: it runs one node only"
        )
    for key, value, low in (
        ("launch.slurm.time_min", s.time_min, 1),
        ("launch.slurm.gpus_per_node", s.gpus_per_node, 0),
        ("launch.slurm.cpus_per_task", s.cpus_per_task, 1),
        ("launch.slurm.signal_delay_s", s.signal_delay_s, 0),
        ("launch.slurm.max_requeue", s.max_requeue, 0),
    ):
        if value < low:
            raise LaunchError(f"{key}={value}: expected >= {low}")
    if s.signal_delay_s >= s.time_min * 60:
        raise LaunchError(
            f"launch.slurm.signal_delay_s={s.signal_delay_s}: must be below launch.slurm.time_min*60 "
            f"= {s.time_min * 60}"
        )


def validate_config(cfg: DictConfig, gpus: int | None = None) -> NodePlan:
    """Every check that can run before a process starts; raises LaunchError or the config layer's
    ConfigError (the trainer's and model's checks, at the world size this launch gives them)."""
    from conf import validated

    gpus = gpus_present() if gpus is None else gpus
    launch_cfg: LaunchConfig = OmegaConf.to_object(cfg.launch)  # type: ignore[assignment]
    node = validate_launch(launch_cfg, cfg.trainer.device, gpus)
    validated(cfg, world_size=node.nnodes * node.nproc_per_node)
    return node
