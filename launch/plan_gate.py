"""Before torchrun starts: the dry-run planner (python -m train.plan, its own process: it sets up a fake
process group) on the job's world size, and a refusal when the peak memory per rank does not fit."""

from __future__ import annotations

import subprocess
import sys

from launch.config import LaunchConfig

EXIT_BAD_VALUE, EXIT_DOES_NOT_FIT = 2, 3
"""train.plan's exit codes for a bad config value and for a layout that does not fit."""


def plan_refusal(
    launch: LaunchConfig, overrides: list[str], world_size: int, per_node: int, gpus_here: int
) -> str | None:
    """Runs the planner (printing its plan); returns why the launch is refused, or None to go ahead."""
    device = launch.plan_device
    if device == "auto" and launch.kind == "slurm" and gpus_here == 0:
        print(
            "launch: plan skipped: no GPU here to plan for; set launch.plan_device (e.g. h100-80gb)",
            flush=True,
        )
        return None
    cmd = [
        sys.executable,
        "-m",
        "train.plan",
        *overrides,
        f"--world-size={world_size}",
        f"--gpus-per-node={per_node}",
        f"--device={device}",
    ]
    if launch.plan_memory_gib is not None:
        cmd.append(f"--memory-gib={launch.plan_memory_gib}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(proc.stdout, end="", flush=True)
    if proc.returncode == EXIT_DOES_NOT_FIT:
        return (
            f"the plan above does not fit {world_size} rank(s) on launch.plan_device={device}; change the "
            "knob it names, or add launch.plan=false to launch anyway"
        )
    if proc.returncode == EXIT_BAD_VALUE:
        return f"the planner refused the config: {proc.stderr.strip()[-2000:]}"
    if proc.returncode != 0:  # the planner itself failed: say so, and do not hold the job back for it
        print(
            f"launch: warning: the planner failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}",
            flush=True,
        )
    return None
