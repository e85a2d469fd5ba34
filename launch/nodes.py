"""Where this agent sits in the job: GPUs present, ranks per node, node rank and rendezvous endpoint.

Values come from the config first, then from SLURM's environment (one torchrun agent per node), then from
plain defaults for a single machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

import errors
from launch.config import LaunchConfig


class LaunchError(errors.ConfigError):
    """A launch setting that cannot run; the message names the field, the value and what was expected."""


def gpus_present() -> int:
    """CUDA devices visible to this process (0 on a CPU-only machine)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def parse_nproc(value: str | int, field: str = "launch.nproc_per_node") -> int | None:
    """An integer >= 1, or None for `auto`; anything else is an error naming the field."""
    text = str(value).strip()
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise LaunchError(f"{field}={value!r}: expected a positive integer or 'auto'")
    return int(text)


def expand_nodelist(nodelist: str) -> list[str]:
    """Expands SLURM's compressed node list: `gpu[01-03,07],login1` -> gpu01 gpu02 gpu03 gpu07 login1."""
    hosts: list[str] = []
    # Split on commas that are not inside brackets.
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", item)
        if not match:
            hosts.append(item)
            continue
        prefix, ranges, suffix = match.groups()
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not hi:
                hosts.append(f"{prefix}{lo}{suffix}")
                continue
            for n in range(int(lo), int(hi) + 1):
                hosts.append(f"{prefix}{n:0{len(lo)}d}{suffix}")
    return hosts


def first_host(nodelist: str) -> str:
    """The job's first node: `scontrol show hostnames` when SLURM's tools are here, else our own parser."""
    if shutil.which("scontrol"):
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=False
        )
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    hosts = expand_nodelist(nodelist)
    if not hosts:
        raise LaunchError(f"SLURM_JOB_NODELIST={nodelist!r} names no host")
    return hosts[0]


@dataclass
class NodePlan:
    """What one torchrun agent needs to join its job."""

    nnodes: int
    """Agents (nodes) in the job."""
    nproc_per_node: int
    """Ranks this agent starts."""
    node_rank: int
    """This agent's node index (0 hosts the c10d rendezvous store)."""
    rdzv_endpoint: str
    """host:port of the rendezvous."""
    rdzv_id: str
    """Id shared by every agent of the job."""


def _port(endpoint: str) -> str:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LaunchError(f"launch.rdzv_endpoint={endpoint!r}: expected host:port")
    return port


def plan_node(
    cfg: LaunchConfig,
    gpus: int,
    uses_cuda: bool,
    env: Mapping[str, str] | None = None,
    gpus_source: str = "this node has",
) -> NodePlan:
    """Resolves nproc_per_node, node rank and rendezvous for this agent; errors name the field at fault.

    `gpus` is the number of CUDA devices on this node and `uses_cuda` whether the trainer will run on them
    (trainer.device auto or cuda); more ranks than GPUs is only refused then, since CPU ranks share cores.
    `gpus_source` says where the GPU count came from, for the error message.
    """
    env = os.environ if env is None else env
    nproc = parse_nproc(cfg.nproc_per_node)
    if nproc is None:
        nproc = max(cfg.slurm.gpus_per_node if cfg.kind == "slurm" else gpus, 1)
    if uses_cuda and gpus > 0 and nproc > gpus:
        raise LaunchError(
            f"launch.nproc_per_node={cfg.nproc_per_node} asks for {nproc} ranks but {gpus_source} {gpus} "
            f"GPU(s); use at most {gpus} (or auto), or trainer.device=cpu"
        )
    if cfg.nnodes < 1:
        raise LaunchError(f"launch.nnodes={cfg.nnodes}: expected >= 1")
    port = _port(cfg.rdzv_endpoint)
    endpoint, rdzv_id = cfg.rdzv_endpoint, cfg.rdzv_id
    node_rank = cfg.node_rank
    under_slurm = "SLURM_JOB_ID" in env and cfg.kind != "local"
    if under_slurm:
        if node_rank is None and "SLURM_NODEID" in env:
            node_rank = int(env["SLURM_NODEID"])
        if "SLURM_JOB_NODELIST" in env:
            endpoint = f"{first_host(env['SLURM_JOB_NODELIST'])}:{port}"
        rdzv_id = f"slurm-{env['SLURM_JOB_ID']}"
    node_rank = 0 if node_rank is None else node_rank
    if not 0 <= node_rank < cfg.nnodes:
        raise LaunchError(
            f"launch.node_rank={node_rank}: expected 0 <= node_rank < launch.nnodes={cfg.nnodes}"
        )
    return NodePlan(cfg.nnodes, nproc, node_rank, endpoint, rdzv_id)
