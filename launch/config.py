"""How a training job is started: torchrun on one node, many nodes, or through SLURM."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

# The choice fields' allowed values; OmegaConf refuses any other value, naming these.
Executor = StrEnum("Executor", ["slurm", "local"])
LaunchKind = StrEnum("LaunchKind", ["local", "multinode", "slurm"])
RdzvBackend = StrEnum("RdzvBackend", ["c10d", "static", "etcd", "etcd-v2"])  # torchrun's names


@dataclass
class SlurmConfig:
    partition: str | None = None
    """SLURM partition (required for launch=slurm with executor=slurm)."""
    account: str | None = None
    """SLURM account."""
    qos: str | None = None
    """SLURM quality of service."""
    time_min: int = 60
    """Wall-clock limit per job, in minutes."""
    gpus_per_node: int = 8
    """GPUs requested per node; also the torchrun nproc_per_node when launch.nproc_per_node=auto."""
    cpus_per_task: int = 16
    """CPUs per node's task (one torchrun agent per node)."""
    mem_gb: int | None = None
    """Memory per node in GiB (None: the partition's default)."""
    constraint: str | None = None
    """SLURM --constraint (node features, e.g. h100), None: any node of the partition."""
    signal_delay_s: int = 120
    """Seconds before the time limit at which SLURM sends launch.preempt_signal (checkpoint, then requeue)."""
    max_requeue: int = 3
    """How many times a timed-out job is requeued (pre-empted jobs are always requeued)."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run in the sbatch script before the job starts, e.g. `module load cuda`."""
    executor: Executor = Executor.slurm
    """submitit executor: slurm | local (runs the same job here without a cluster, for tests)."""
    folder: str = "${run.dir}/slurm"
    """Where submitit writes scripts and logs."""
    wait: bool = True
    """Block until the job ends and exit with its code (sweeps always wait, to print the summary)."""
    dry_run: bool = False
    """Print the sbatch script that would be submitted and exit 0 without submitting."""


@dataclass
class LaunchConfig:
    kind: LaunchKind = LaunchKind.local
    """local | multinode | slurm."""
    nnodes: int = 1
    """Number of nodes (torchrun agents)."""
    nproc_per_node: str = "auto"
    """Ranks per node: an integer, or auto (the GPUs present, else 1; launch=slurm: slurm.gpus_per_node)."""
    node_rank: int | None = None
    """This node's rank (multinode); None: from SLURM_NODEID or 0."""
    rdzv_backend: RdzvBackend = RdzvBackend.c10d
    """torchrun rendezvous backend."""
    rdzv_endpoint: str = "127.0.0.1:29500"
    """host:port of the rendezvous (multinode); under SLURM the host becomes the job's first node."""
    rdzv_id: str = "${run.name}"
    """Rendezvous id shared by all agents of one job (SLURM_JOB_ID under SLURM)."""
    local_addr: str | None = None
    """Address this node advertises to the others (torchrun --local-addr); None: its hostname."""
    max_restarts: int = 0
    """torchrun restarts of the worker group after a failure (each resumes from the last checkpoint)."""
    preempt_signal: str = "USR1"
    """Signal the trainer answers by checkpointing and exiting; forwarded to the ranks on pre-emption."""
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    """SLURM job options, used by launch=slurm."""
    plan: bool = True
    """Run the dry-run planner (python -m train.plan) first and refuse a layout whose peak memory per rank
    does not fit its device; false launches without it."""
    plan_device: str = "auto"
    """The device the planner checks against: auto (this machine's GPU, or its RAM when it has none; a SLURM
    job from a machine without GPUs is then not planned) or one of train.plan's table (h100-80gb, ...)."""
    plan_memory_gib: float | None = None
    """The memory per device the plan must fit, in GiB, instead of plan_device's (a MIG slice, memory kept
    for something else); None: the device's."""
