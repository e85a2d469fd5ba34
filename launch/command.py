"""The torchrun command line for one agent, and the train overrides it forwards."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from launch.config import LaunchConfig
from launch.nodes import NodePlan


def is_launch_override(override: str) -> bool:
    """True for `launch=...`, `launch.x=...` and their +/~ forms: they steer the launcher, not the trainer."""
    key = override.lstrip("+~").split("=", 1)[0].strip()
    return key == "launch" or key.startswith("launch.")


def override_key(override: str) -> str:
    """The config key an override sets: `++optim.lr=1e-3` -> `optim.lr`."""
    return override.lstrip("+~").split("=", 1)[0].strip()


def train_overrides(task_overrides: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """The overrides the trainer gets: the user's, minus launch.*, then `extra` (which wins on a clash)."""
    extra_keys = {override_key(o) for o in extra}
    kept = [o for o in task_overrides if not is_launch_override(o) and override_key(o) not in extra_keys]
    return [*kept, *extra]


def torchrun_command(cfg: LaunchConfig, node: NodePlan, overrides: Sequence[str]) -> list[str]:
    """`python -m torch.distributed.run ... -m train <overrides>` for this node.

    A one-node job uses --standalone, which picks a free port, so concurrent local jobs never collide;
    multi-node jobs meet at the c10d rendezvous, hosted by node 0 (is_host), so agents that share a machine
    (the loopback test) do not race to host it.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if node.nnodes == 1:
        cmd += ["--standalone"]
    else:
        cmd += [
            f"--rdzv-backend={cfg.rdzv_backend}",
            f"--rdzv-endpoint={node.rdzv_endpoint}",
            f"--rdzv-id={node.rdzv_id}",
            f"--node-rank={node.node_rank}",
        ]
        if cfg.rdzv_backend == "c10d":
            cmd += [f"--rdzv-conf=is_host={'true' if node.node_rank == 0 else 'false'}"]
        if cfg.local_addr:
            cmd += [f"--local-addr={cfg.local_addr}"]
    cmd += [
        f"--nnodes={node.nnodes}",
        f"--nproc-per-node={node.nproc_per_node}",
        f"--max-restarts={cfg.max_restarts}",
        "-m",
        "train",
        *overrides,
    ]
    return cmd
