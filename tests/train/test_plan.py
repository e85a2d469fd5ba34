"""The dry-run planner (`python -m train.plan`) and the gate `python -m launch` puts in front of torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

MICRO = [
    "model=micro",
    "model.vocab_size=512",
    "trainer.seq_len=64",
    "trainer.micro_batch=4",
    "trainer.global_batch_tokens=512",
]


def plan(jobs, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "train.plan", *MICRO, *args]
    return subprocess.run(cmd, cwd=jobs.repo, env=env, capture_output=True, text=True, timeout=240)


def test_plan_shards_parameters_and_optimizer_state_over_fsdp_ranks_and_times_the_step(jobs):
    single = plan(jobs, "--world-size=1", "--device=h100-80gb", "--json")
    fsdp = plan(jobs, "parallel=fsdp", "--world-size=2", "--device=h100-80gb", "--json")
    assert single.returncode == 0, single.stderr
    assert fsdp.returncode == 0, fsdp.stderr
    one, two = json.loads(single.stdout), json.loads(fsdp.stdout)
    assert one["fits"] and one["device"] == "H100 80GB" and one["world_size"] == 1
    # bf16 on a GPU target, fp32 master weights: each FSDP rank holds about half (shards are padded)
    for kind in ("params", "optimizer"):
        assert two["memory"][kind] == pytest.approx(one["memory"][kind] / 2, rel=0.05), kind
    assert two["memory"]["params_per_rank"] < 0.55 * one["memory"]["params_per_rank"]
    assert 0 < one["memory"]["activations"] < one["memory"]["peak"]
    # the same tokens per step on twice the devices: half the step time at the same MFU
    assert two["step_s"] == pytest.approx(one["step_s"] / 2)
    assert one["tokens_per_s"] == pytest.approx(512 / one["step_s"])


def test_expert_parallel_layouts_plan_with_the_experts_split_over_the_ranks(jobs):
    # The MoE traces on fake tensors (the routing taken as even); the experts are most of micro_moe's weights.
    moe = ("model=micro_moe", "trainer.micro_batch=2", "--device=h100-80gb", "--json")
    runs = {
        "single": plan(jobs, *moe, "--world-size=1"),
        "fsdp 4 x ep 2": plan(jobs, *moe, "parallel=fsdp", "parallel.ep=2", "--world-size=4"),
        "fsdp 2 x tp 2 x ep 2": plan(
            jobs, *moe, "parallel=fsdp", "parallel.tp=2", "parallel.ep=2", "--world-size=4"
        ),
    }
    for name, proc in runs.items():
        assert proc.returncode == 0, (name, proc.stderr[-3000:])
    one, fsdp_ep, tp_ep = (json.loads(proc.stdout)["memory"]["params_per_rank"] for proc in runs.values())
    assert fsdp_ep < 0.3 * one  # every weight over 4 ranks (the experts: 2 ep x 2 FSDP)
    assert tp_ep < 0.55 * one  # the experts over 2 ep ranks, replicated over TP


def test_an_moe_model_plans_for_a_cpu_run_in_fp32(jobs):
    # the CPU runs the experts' grouped matmuls in fp32, which torch's shape rule for them refuses
    proc = plan(
        jobs, "model=micro_moe", "parallel=fsdp", "parallel.ep=2", "--world-size=2", "--device=cpu", "--json"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    memory = json.loads(proc.stdout)["memory"]
    # fp32 weights (plus the buffers: RoPE tables, the routers' bias and counts), no bf16 copy
    assert 4 * memory["params_per_rank"] <= memory["params"] < 1.1 * 4 * memory["params_per_rank"]


def test_an_moe_model_with_a_capacity_limit_plans_as_dropless_its_upper_bound(jobs):
    args = ("model=micro_moe", "--world-size=1", "--device=cpu", "--json")
    dropless = plan(jobs, *args)
    capped = plan(jobs, "model.moe_capacity_factor=1.25", *args)
    assert capped.returncode == 0, capped.stderr[-3000:]
    assert json.loads(capped.stdout)["memory"] == json.loads(dropless.stdout)["memory"]


def test_a_layout_that_does_not_fit_exits_3_and_names_the_knob_that_helps_most(jobs):
    proc = plan(jobs, "--world-size=1", "--device=a100-40gb", "--memory-gib=0.002")
    assert proc.returncode == 3, proc.stderr
    assert "DOES NOT FIT" in proc.stdout
    assert "helps most: parallel.activation_checkpointing=full" in proc.stdout


def test_a_chunked_loss_plans_smaller_logits_buffers(jobs):
    vocab = "model.vocab_size=4096"  # logits (256 tokens x 4096) well above the head's weight (4096 x 64)
    whole = json.loads(plan(jobs, vocab, "model.loss_chunk_tokens=0", "--device=cpu", "--json").stdout)
    chunked = json.loads(plan(jobs, vocab, "model.loss_chunk_tokens=32", "--device=cpu", "--json").stdout)
    assert chunked["memory"]["loss_buffers"] < whole["memory"]["loss_buffers"] / 2
    assert chunked["memory"]["peak"] < whole["memory"]["peak"]


def test_tensor_parallel_plans_each_rank_its_vocab_shard_of_the_logits(jobs):
    args = ("model.vocab_size=4096", "model.loss_chunk_tokens=0", "--world-size=2", "--device=cpu", "--json")
    fsdp = json.loads(plan(jobs, "parallel=fsdp", *args).stdout)["memory"]["loss_buffers"]
    tp = json.loads(plan(jobs, "parallel.tp=2", *args).stdout)["memory"]["loss_buffers"]
    assert 0.4 * fsdp < tp < 0.6 * fsdp


def test_bad_planner_options_are_refused_naming_them(jobs):
    proc = plan(jobs, "--device=tpu-v9")
    assert proc.returncode == 2
    assert "--device 'tpu-v9' is not a known device" in proc.stderr


@pytest.mark.usefixtures("data_root")
def test_launch_refuses_a_layout_that_does_not_fit_unless_told_to_launch_anyway(tmp_path, jobs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "launch", *jobs.tiny, "trainer.max_steps=3", "checkpoint.enabled=false"]
    tight = ["launch.nproc_per_node=1", "launch.plan_device=cpu", "launch.plan_memory_gib=0.002"]
    refused = subprocess.run(
        [*launch, *tight, f"run.dir={tmp_path / 'refused'}"],
        cwd=jobs.repo, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert "DOES NOT FIT" in refused.stdout
    assert "add launch.plan=false to launch anyway" in refused.stderr
    assert not (tmp_path / "refused").exists()  # torchrun never started

    forced = subprocess.run(
        [*launch, *tight, "launch.plan=false", f"run.dir={tmp_path / 'forced'}"],
        cwd=jobs.repo, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    assert sorted(jobs.train_rows(tmp_path / "forced")) == [1, 2, 3]
