"""One torchrun agent of a job, wherever it runs (this machine, a node of an allocation, a SLURM task)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from launch.command import torchrun_command
from launch.config import LaunchConfig
from launch.nodes import NodePlan
from launch.process import LaunchStopped, run_torchrun
from launch.summary import STATUS_FILE


def write_status(run_dir: Path, status: dict) -> None:
    """<run.dir>/launch.json: how the run was started and, once known, how it ended (written atomically)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{STATUS_FILE}.tmp"
    tmp.write_text(json.dumps(status, indent=2) + "\n")
    tmp.replace(run_dir / STATUS_FILE)


def read_exit_code(run_dir: Path) -> int | None:
    """The exit code node 0 recorded in launch.json, if it got that far."""
    path = run_dir / STATUS_FILE
    return json.loads(path.read_text()).get("exit_code") if path.exists() else None


def run_agent(
    cfg: LaunchConfig,
    node: NodePlan,
    overrides: Sequence[str],
    run_dir: Path,
    run_name: str,
    on_preempt: Callable[[subprocess.Popen], None] | None = None,
) -> int:
    """Runs this node's torchrun agent to the end and returns its exit code.

    Output goes to our stdout and to <run.dir>/launch_node<rank>.log; node 0 records launch.json.
    """
    cmd = torchrun_command(cfg, node, overrides)
    status = {"name": run_name, "command": cmd, "overrides": list(overrides), "nnodes": node.nnodes}
    run_dir.mkdir(parents=True, exist_ok=True)
    if node.node_rank == 0:
        write_status(run_dir, {**status, "started": time.time(), "exit_code": None})
    print(f"[launch] node {node.node_rank}/{node.nnodes}: {' '.join(cmd)}", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = run_dir / f"launch_node{node.node_rank}.log"
    try:
        # Inside a SLURM job step, SLURM's own SIGTERM reaches torchrun too: do not send it a second one.
        forward = "SLURM_STEP_ID" not in os.environ
        rc = run_torchrun(cmd, env, log, cfg.preempt_signal, on_preempt, forward_stop=forward)
    except (KeyboardInterrupt, LaunchStopped) as exc:
        if node.node_rank == 0:
            stop = "SIGINT" if isinstance(exc, KeyboardInterrupt) else str(exc).removeprefix("stopped by ")
            write_status(run_dir, {**status, "ended": time.time(), "exit_code": None, "stopped_by": stop})
        raise
    if node.node_rank == 0:
        write_status(run_dir, {**status, "ended": time.time(), "exit_code": rc})
    print(f"[launch] {run_name}: torchrun exited with code {rc}", flush=True)
    return rc
