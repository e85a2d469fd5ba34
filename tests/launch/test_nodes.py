"""Node planning: ranks per node, node rank and rendezvous from config or SLURM's environment."""

from __future__ import annotations

import pytest

from launch.config import LaunchConfig
from launch.nodes import LaunchError, expand_nodelist, first_host, parse_nproc, plan_node


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("node5", ["node5"]),
        ("gpu[01-03,07],login1", ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]),
        ("a[9-11]", ["a9", "a10", "a11"]),
        ("rack1-n[1-2],rack2-n[3]", ["rack1-n1", "rack1-n2", "rack2-n3"]),
    ],
)
def test_expand_nodelist_matches_scontrol_show_hostnames(nodelist: str, hosts: list[str]) -> None:
    assert expand_nodelist(nodelist) == hosts


def test_first_host_is_the_first_node_of_the_list() -> None:
    assert first_host("gpu[07-08],cpu1") == "gpu07"


def test_nproc_auto_is_the_gpus_present_else_one() -> None:
    assert plan_node(LaunchConfig(), gpus=4, uses_cuda=True, env={}).nproc_per_node == 4
    assert plan_node(LaunchConfig(), gpus=0, uses_cuda=True, env={}).nproc_per_node == 1


def test_nproc_auto_under_slurm_is_the_gpus_requested_per_node() -> None:
    cfg = LaunchConfig(kind="slurm")
    cfg.slurm.gpus_per_node = 4
    assert plan_node(cfg, gpus=0, uses_cuda=True, env={}).nproc_per_node == 4


def test_more_ranks_than_gpus_is_refused_naming_the_field() -> None:
    cfg = LaunchConfig(nproc_per_node="2")
    with pytest.raises(LaunchError, match=r"launch\.nproc_per_node=2 .* 1 GPU"):
        plan_node(cfg, gpus=1, uses_cuda=True, env={})
    # CPU ranks (trainer.device=cpu) may outnumber the GPUs.
    assert plan_node(cfg, gpus=1, uses_cuda=False, env={}).nproc_per_node == 2


@pytest.mark.parametrize("value", ["abc", "0", "-1", "1.5"])
def test_nproc_must_be_a_positive_integer_or_auto(value: str) -> None:
    with pytest.raises(LaunchError, match="launch.nproc_per_node"):
        parse_nproc(value)


def test_multinode_takes_rank_endpoint_and_id_from_slurm() -> None:
    cfg = LaunchConfig(kind="multinode", nnodes=2, rdzv_endpoint="127.0.0.1:29600")
    env = {"SLURM_JOB_ID": "42", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    node = plan_node(cfg, gpus=8, uses_cuda=True, env=env)
    assert (node.node_rank, node.rdzv_endpoint, node.rdzv_id) == (1, "gpu07:29600", "slurm-42")


def test_configured_node_rank_wins_over_slurm() -> None:
    cfg = LaunchConfig(kind="multinode", nnodes=2, node_rank=0)
    assert (
        plan_node(cfg, gpus=0, uses_cuda=False, env={"SLURM_JOB_ID": "1", "SLURM_NODEID": "1"}).node_rank == 0
    )


def test_local_kind_ignores_slurm_environment() -> None:
    node = plan_node(LaunchConfig(), gpus=0, uses_cuda=False, env={"SLURM_JOB_ID": "1", "SLURM_NODEID": "3"})
    assert (node.node_rank, node.rdzv_endpoint) == (0, "127.0.0.1:29500")


def test_node_rank_outside_the_job_is_refused() -> None:
    with pytest.raises(LaunchError, match="launch.node_rank=2"):
        plan_node(LaunchConfig(kind="multinode", nnodes=2, node_rank=2), gpus=0, uses_cuda=False, env={})


def test_endpoint_without_port_is_refused() -> None:
    with pytest.raises(LaunchError, match="launch.rdzv_endpoint"):
        plan_node(
            LaunchConfig(kind="multinode", nnodes=2, rdzv_endpoint="node0"), gpus=0, uses_cuda=False, env={}
        )
