"""One torchrun agent of a job, wherever it runs (this machine, a node of an allocation, a SLURM task)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from data.credentials import redact
from errors import EXIT_FILE_ENV
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
    shown = [redact(arg) for arg in cmd]  # credential URLs are refused at start; this is the last guard
    status = {"name": run_name, "command": shown, "overrides": [redact(o) for o in overrides]}
    status["nnodes"] = node.nnodes
    run_dir.mkdir(parents=True, exist_ok=True)
    if node.node_rank == 0:
        write_status(run_dir, {**status, "started": time.time(), "exit_code": None})
    print(f"[launch] node {node.node_rank}/{node.nnodes}: {' '.join(shown)}", flush=True)
    log = run_dir / f"launch_node{node.node_rank}.log"
    with tempfile.TemporaryDirectory(prefix="diffv2-exit-") as tmp:
        exit_file = Path(tmp) / "exit_code"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", EXIT_FILE_ENV: str(exit_file)}
        try:
            # Inside a SLURM job step, SLURM's own SIGTERM reaches torchrun too: do not send it a second one.
            forward = "SLURM_STEP_ID" not in os.environ
            rc = run_torchrun(cmd, env, log, cfg.preempt_signal, on_preempt, forward_stop=forward)
        except (KeyboardInterrupt, LaunchStopped) as exc:
            if node.node_rank == 0:
                by = str(exc).removeprefix("stopped by ")
                stop = "SIGINT" if isinstance(exc, KeyboardInterrupt) else by
                write_status(run_dir, {**status, "ended": time.time(), "exit_code": None, "stopped_by": stop})
            raise
        rc = _workers_code(rc, exit_file)
    if node.node_rank == 0:
        write_status(run_dir, {**status, "ended": time.time(), "exit_code": rc})
    print(f"[launch] {run_name}: torchrun exited with code {rc}", flush=True)
    return rc


def _workers_code(torchrun_rc: int, exit_file: Path) -> int:
    """The code rank 0 exited with (it records it in $DIFFV2_EXIT_FILE, train/__main__.py): torchrun exits
    1 whatever code a worker failed with, which would lose the contract's codes (4, 5, ...)."""
    if torchrun_rc == 0 or not exit_file.is_file():
        return torchrun_rc
    try:
        code = int(exit_file.read_text().strip())
    except ValueError:
        return torchrun_rc
    return code or torchrun_rc
