"""The torchrun command line and the overrides forwarded to `-m train`."""

from __future__ import annotations

from launch.command import torchrun_command, train_overrides
from launch.config import LaunchConfig
from launch.nodes import NodePlan


def test_launch_overrides_stay_with_the_launcher() -> None:
    task = ["optim.lr=1e-3", "launch=multinode", "launch.nnodes=2", "+launch.x=1", "attention=baseline"]
    assert train_overrides(task) == ["optim.lr=1e-3", "attention=baseline"]


def test_extra_overrides_replace_the_users_same_key() -> None:
    got = train_overrides(["run.name=mine", "optim.lr=1e-3"], extra=["run.name=trial-0"])
    assert got == ["optim.lr=1e-3", "run.name=trial-0"]


def test_one_node_uses_standalone_rendezvous() -> None:
    cmd = torchrun_command(LaunchConfig(), NodePlan(1, 2, 0, "127.0.0.1:29500", "r"), ["optim.lr=1e-3"])
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert "--standalone" in cmd and "--nproc-per-node=2" in cmd
    assert cmd[-3:] == ["-m", "train", "optim.lr=1e-3"]
    assert not any(a.startswith("--rdzv") for a in cmd)


def test_multinode_uses_c10d_hosted_by_node_zero() -> None:
    cfg = LaunchConfig(kind="multinode", nnodes=2)
    node0 = torchrun_command(cfg, NodePlan(2, 1, 0, "10.0.0.1:29400", "job"), [])
    node1 = torchrun_command(cfg, NodePlan(2, 1, 1, "10.0.0.1:29400", "job"), [])
    for cmd in (node0, node1):
        assert "--standalone" not in cmd
        assert {
            "--rdzv-backend=c10d",
            "--rdzv-endpoint=10.0.0.1:29400",
            "--rdzv-id=job",
            "--nnodes=2",
        } <= set(cmd)
    assert "--rdzv-conf=is_host=true" in node0 and "--rdzv-conf=is_host=false" in node1
