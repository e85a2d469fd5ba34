"""launch=slurm: one submitit job, one task (one torchrun agent) per node, requeued on pre-emption.

Pre-emption and time limits: SLURM sends launch.preempt_signal to every process of the job step
launch.slurm.signal_delay_s before the end. The ranks checkpoint and exit (the trainer's handler); torchrun
ignores the signal (see launch.process); the submitit task waits for torchrun to finish, then submitit's own
handler requeues the job, which restarts with checkpoint.resume=auto.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import submitit
from omegaconf import DictConfig, OmegaConf

from launch.agent import read_exit_code, run_agent
from launch.config import LaunchConfig
from launch.nodes import gpus_present, plan_node
from launch.process import drain

DRAIN_MARGIN_S = 15
"""Seconds kept, out of signal_delay_s, for submitit to requeue after the ranks have checkpointed."""


def slurm_parameters(cfg: LaunchConfig, job_name: str) -> dict[str, Any]:
    """sbatch options in submitit's SlurmExecutor names; the submitted and the dry-run script share them."""
    s = cfg.slurm
    params: dict[str, Any] = {
        "job_name": job_name,
        "partition": s.partition,
        "account": s.account,
        "qos": s.qos,
        "time": s.time_min,
        "nodes": cfg.nnodes,
        "ntasks_per_node": 1,
        "cpus_per_task": s.cpus_per_task,
        "gpus_per_node": s.gpus_per_node or None,
        "mem": f"{s.mem_gb}GB" if s.mem_gb else None,
        "constraint": s.constraint,
        "signal_delay_s": s.signal_delay_s,
        "stderr_to_stdout": True,
        # submitit reads the signal to handle from this variable when the job's Python starts.
        "setup": [f"export SUBMITIT_PREEMPT_SIGNAL={cfg.preempt_signal}", *s.setup],
        # submitit writes --signal with its own default signal (USR2); the trainer listens for ours.
        "additional_parameters": {"signal": f"{cfg.preempt_signal}@{s.signal_delay_s}"},
    }
    return {k: v for k, v in params.items() if v is not None}


def render_sbatch(cfg: LaunchConfig, job_name: str, folder: Path) -> str:
    """The sbatch script SlurmExecutor submits for these settings (built without a cluster)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, **slurm_parameters(cfg, job_name))


class TorchrunJob(submitit.helpers.Checkpointable):
    """The callable each SLURM task runs: this node's torchrun agent; requeued (resuming) on pre-emption."""

    def __init__(
        self, cfg: LaunchConfig, overrides: list[str], run_dir: str, run_name: str, uses_cuda: bool
    ) -> None:
        self.cfg = cfg
        self.overrides = overrides
        self.run_dir = run_dir
        self.run_name = run_name
        self.uses_cuda = uses_cuda

    def __call__(self) -> int:
        node = plan_node(self.cfg, gpus_present(), self.uses_cuda, env=os.environ)
        preempt = getattr(signal, f"SIG{self.cfg.preempt_signal}")
        submitit_handler = signal.getsignal(preempt)

        def requeue_after_checkpoint(proc: subprocess.Popen) -> None:
            rc = drain(proc, max(self.cfg.slurm.signal_delay_s - DRAIN_MARGIN_S, 5))
            print(f"[launch] ranks stopped (torchrun exit code {rc}); handing over to submitit", flush=True)
            if callable(submitit_handler):
                submitit_handler(preempt, None)

        rc = run_agent(
            self.cfg, node, self.overrides, Path(self.run_dir), self.run_name, requeue_after_checkpoint
        )
        if rc != 0:
            raise RuntimeError(
                f"torchrun exited with code {rc}; see {self.run_dir}/launch_node{node.node_rank}.log"
            )
        return rc

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """The requeued job resumes from the checkpoint the ranks just wrote, whatever resume was set to."""
        overrides = [o for o in self.overrides if not o.startswith("checkpoint.resume=")]
        requeued = TorchrunJob(
            self.cfg, [*overrides, "checkpoint.resume=auto"], self.run_dir, self.run_name, self.uses_cuda
        )
        return submitit.helpers.DelayedSubmission(requeued, *args, **kwargs)


@dataclass
class SubmittedJob:
    """A job handed to SLURM (or to submitit's local executor)."""

    job: submitit.Job
    run_dir: Path

    def wait(self) -> int:
        """Blocks until the job ends; 0, or the exit code node 0 recorded (1 when it recorded none)."""
        try:
            self.job.result()
            return 0
        except Exception as exc:  # submitit re-raises the task's failure (or a cancellation) here
            print(
                f"[launch] job {self.job.job_id} failed: {str(exc).strip().splitlines()[-1]}", file=sys.stderr
            )
            return read_exit_code(self.run_dir) or 1


def make_executor(cfg: LaunchConfig, folder: Path, job_name: str) -> submitit.Executor:
    s = cfg.slurm
    if s.executor == "local":
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=s.max_requeue)
        params = slurm_parameters(cfg, job_name)
        executor.update_parameters(
            timeout_min=s.time_min,
            nodes=1,
            tasks_per_node=1,
            gpus_per_node=min(s.gpus_per_node, gpus_present()),
            signal_delay_s=s.signal_delay_s,
            stderr_to_stdout=True,
            setup=params["setup"],
        )
        return executor
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=s.max_requeue)
    executor.update_parameters(**slurm_parameters(cfg, job_name))
    return executor


def submit(cfg: DictConfig, overrides: list[str]) -> SubmittedJob | None:
    """Submits the run (or prints its sbatch script when launch.slurm.dry_run); the job handle to wait on."""
    launch_cfg: LaunchConfig = OmegaConf.to_object(cfg.launch)  # type: ignore[assignment]
    run_dir = Path(cfg.run.dir).absolute()
    folder = Path(launch_cfg.slurm.folder).absolute()
    launch_cfg = replace(launch_cfg, slurm=replace(launch_cfg.slurm, folder=str(folder)))
    # The job may start in another directory: pin the run dir the trainer writes to.
    overrides = [o for o in overrides if not o.startswith("run.dir=")] + [f"run.dir={run_dir}"]
    if launch_cfg.slurm.dry_run:
        print(render_sbatch(launch_cfg, cfg.run.name, folder))
        print(f"# task: torchrun -m train {' '.join(overrides)}")
        return None
    executor = make_executor(launch_cfg, folder, cfg.run.name)
    task = TorchrunJob(
        launch_cfg, overrides, str(run_dir), cfg.run.name, cfg.trainer.device in ("auto", "cuda")
    )
    job = executor.submit(task)
    print(
        f"[launch] submitted {cfg.run.name}: job {job.job_id} ({launch_cfg.slurm.executor}), logs in {folder}"
    )
    return SubmittedJob(job, run_dir)
