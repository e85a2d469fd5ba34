"""The `python -m launch` task: validate the composed config, then run torchrun here or submit it to SLURM."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from data.credentials import redact, refuse_in_config
from errors import ConfigError, ProjectError
from launch import sweep
from launch.agent import run_agent
from launch.command import train_overrides
from launch.config import LaunchConfig
from launch.nodes import gpus_present, parse_nproc, plan_node
from launch.plan_gate import plan_refusal
from launch.validate import validate_config

EXIT_CODES: list[int] = []
"""Exit codes of the jobs this process ran (one for a single launch); __main__ exits with the first error."""


def launch_task(cfg: DictConfig) -> int:
    """Hydra's task function for one job (a single launch, or one trial of a sweep)."""
    hc = HydraConfig.get()
    task = list(hc.overrides.task)
    extra: list[str] = []
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun:
        trial = sweep.trial_for(hc.job.num, task, hc.sweep.dir)
        extra = trial.extra_overrides()
        for key, value in (
            ("run.name", trial.name),
            ("run.dir", str(trial.run_dir)),
            ("wandb.group", trial.group),
        ):
            OmegaConf.update(cfg, key, value)
    elif hc.sweeper.get("params"):
        return _fail(
            ConfigError(
                "this config sweeps hydra.sweeper.params (an experiment recipe): add --multirun, or "
                "hydra.sweeper.params=null to run one trial"
            )
        )
    try:
        refuse_in_config(OmegaConf.to_container(cfg, resolve=True))  # first: the other checks quote values
        validate_config(cfg)
        from train.rundir import check_run_dir_placement, check_run_name  # torch-heavy: imported late

        check_run_name(cfg.run.name)  # before the agent creates run.dir
        check_run_dir_placement(Path(cfg.run.dir))
    except ProjectError as exc:
        return _fail(exc)
    except ValueError as exc:  # the model's own checks raise plain ValueError
        return _fail(ConfigError(str(exc)))
    overrides = train_overrides(task, extra)
    launch_cfg: LaunchConfig = OmegaConf.to_object(cfg.launch)  # type: ignore[assignment]
    gpus = gpus_present()
    if cfg.launch.kind == "slurm":
        from launch.slurm import submit

        per_node = parse_nproc(launch_cfg.nproc_per_node) or launch_cfg.slurm.gpus_per_node
        refusal = _plan(launch_cfg, overrides, launch_cfg.nnodes, per_node, gpus)
        if refusal:
            return _fail(ConfigError(refusal))

        job = submit(cfg, overrides)
        if job is None:  # dry run
            return _record(0)
        if multirun:
            # Every trial is submitted first; the callback waits for them all at the end of the sweep.
            assert sweep.STATE is not None
            sweep.STATE.pending[hc.job.num] = job.wait
            return 0
        return _record(job.wait() if cfg.launch.slurm.wait else 0)
    # Resolve for this machine: the node plan above was checked with the GPUs found here.
    node = plan_node(launch_cfg, gpus, uses_cuda=cfg.trainer.device in ("auto", "cuda"))
    refusal = _plan(launch_cfg, overrides, node.nnodes, node.nproc_per_node, gpus)
    if refusal:
        return _fail(ConfigError(refusal))
    rc = run_agent(launch_cfg, node, overrides, Path(cfg.run.dir), cfg.run.name)
    if multirun and sweep.STATE is not None:
        sweep.STATE.exit_codes[hc.job.num] = rc
    return _record(rc)


def _plan(
    launch_cfg: LaunchConfig, overrides: list[str], nnodes: int, per_node: int, gpus: int
) -> str | None:
    """launch.plan: why the planner refuses this layout, or None (also when launch.plan=false)."""
    if not launch_cfg.plan:
        return None
    return plan_refusal(launch_cfg, overrides, nnodes * per_node, per_node, gpus)


def _record(rc: int) -> int:
    EXIT_CODES.append(rc)
    return rc


def _fail(err: ProjectError) -> int:
    """Reports `err` as every command does (`<label>: <message>`, README's exit-code table); its code is
    recorded for __main__ to exit with, after a sweep's other trials."""
    print(f"{err.label}: {redact(str(err))}", file=sys.stderr, flush=True)
    return _record(err.exit_code)
