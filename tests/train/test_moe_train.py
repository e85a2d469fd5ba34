"""MoE training through `python -m train`: DIFF V2 with MoE feed-forwards learns, logs its router metrics,
balances its experts, and resumes bit for bit (the routing biases travel in the checkpoint)."""

from __future__ import annotations

import re

import pytest
import torch

from analysis.study import load_trial
from conf import compose_run_config
from errors import ConfigError
from train.export import load_exported

pytestmark = pytest.mark.usefixtures("data_root")

MOE = ["model=micro_moe", "attention=diff_v2", "trainer.eval_interval=0", "optim.lr=3e-3"]


def assert_steps_match(rows: dict, single: dict, steps: range, **rel: float) -> None:
    """Each named metric of `rows` equals one process's (`single`) at every step, within its tolerance."""
    for step in steps:
        for key, tolerance in rel.items():
            assert rows[step][key] == pytest.approx(single[step][key], rel=tolerance), (key, step)


def test_diff_v2_with_moe_trains_and_logs_router_metrics(tmp_path, jobs):
    run_dir = tmp_path / "moe"
    overrides = (
        "trainer.max_steps=30",
        "trainer.diag_interval=10",
        "model.moe_z_coef=1e-3",
        "checkpoint.interval=0",
    )
    proc = jobs.in_process(run_dir, *MOE, *overrides)
    assert proc.returncode == 0, proc.stderr
    rows = jobs.train_rows(run_dir)
    first, last = rows[1], rows[30]
    assert last["loss"] < first["loss"] - 0.5, (first["loss"], last["loss"])
    assert all(row["aux_loss"] > 0 for row in rows.values())  # the z-loss, through the model's output
    diag = [row for row in jobs.metrics(run_dir) if "diag/moe_load_max/L0" in row]
    assert [row["step"] for row in diag] == [10, 20, 30]
    for layer in ("L0", "L1"):
        assert 1.0 <= diag[-1][f"diag/moe_load_max/{layer}"] <= 4.0
        assert 0 < diag[-1][f"diag/moe_entropy/{layer}"] <= torch.log(torch.tensor(4.0)).item() + 1e-6
        assert diag[-1][f"diag/moe_z/{layer}"] > 0
        assert diag[-1][f"diag/moe_dropped/{layer}"] == 0  # dropless by default
    exported = load_exported(run_dir)  # the routing biases the trainer moved travel with it
    biases = [v for k, v in exported.state_dict().items() if k.endswith("router.expert_bias")]
    assert len(biases) == 2 and all(b.abs().sum() > 0 for b in biases)
    sizes = load_trial(run_dir).metrics  # what the study report's table shows: total and active
    assert sizes["active_params"] == exported.num_active_params() < sizes["params"] == exported.num_params()


CAPACITY = (
    "model=micro_moe",
    "model.moe_capacity_factor=0.5",
    "trainer.max_steps=4",
    "trainer.diag_interval=2",
    "trainer.eval_interval=0",
    "checkpoint.interval=0",
)
"""Each expert takes half the balanced load: at least half of the routed assignments are dropped."""


def test_a_capacity_factor_drops_assignments_and_the_diagnostics_log_the_dropped_share(tmp_path, jobs):
    assert jobs.in_process(tmp_path / "run", *CAPACITY).returncode == 0
    diag = [row for row in jobs.metrics(tmp_path / "run") if "diag/moe_dropped/L0" in row]
    assert [row["step"] for row in diag] == [2, 4]
    for row in diag:
        assert 0.5 <= row["diag/moe_dropped/L0"] < 1 and 0.5 <= row["diag/moe_dropped/L1"] < 1
        assert row["diag/moe_dropped/max"] == max(row["diag/moe_dropped/L0"], row["diag/moe_dropped/L1"])


@pytest.mark.slow
def test_expert_parallel_with_a_capacity_factor_matches_one_process(tmp_path, jobs):
    # The assignments over capacity are dropped before the all-to-all: the experts' ranks see fewer slots.
    jobs.train(tmp_path / "single", *CAPACITY, "parallel=single")
    jobs.train(tmp_path / "ep", *CAPACITY, "parallel=fsdp", "parallel.ep=2", nproc=2)
    single, ep = jobs.metrics(tmp_path / "single"), jobs.metrics(tmp_path / "ep")
    dropped = [
        [row["diag/moe_dropped/max"] for row in run if "diag/moe_dropped/max" in row] for run in (single, ep)
    ]
    assert dropped[0] == dropped[1] and min(dropped[0]) >= 0.5
    single_rows, ep_rows = jobs.train_rows(tmp_path / "single"), jobs.train_rows(tmp_path / "ep")
    # fp32; as without a capacity (test_expert_parallel_on_two_ranks_...)
    assert_steps_match(ep_rows, single_rows, range(1, 5), loss=1e-5, grad_norm=3e-5)


def test_moe_run_stopped_and_resumed_is_bit_identical_to_a_straight_one(tmp_path, jobs):
    common = (*MOE, "trainer.max_steps=8", "trainer.diag_interval=0", "checkpoint.interval=0")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert jobs.in_process(straight, *common).returncode == 0
    assert jobs.in_process(stopped, *common, "trainer.stop_at_step=4").returncode == 0
    proc = jobs.in_process(stopped, *common, "checkpoint.resume=auto")
    assert proc.returncode == 0 and "resumed from" in proc.stdout, proc.stderr
    expected, resumed = jobs.train_rows(straight), jobs.train_rows(stopped)
    assert [resumed[s]["loss"] for s in range(5, 9)] == [expected[s]["loss"] for s in range(5, 9)]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fsdp", "ddp"])
def test_moe_on_two_ranks_matches_one_process_with_the_same_routing_biases(tmp_path, jobs, mode):
    # The loads of both ranks are summed before each bias update, so the biases (and so every routing
    # choice) are the one process's, which sees the whole global batch in two micro-steps.
    common = (
        "model=micro_moe",
        "model.moe_z_coef=1e-3",
        "trainer.diag_interval=0",
        "trainer.eval_interval=0",
    )
    jobs.train(tmp_path / "single", *common, "parallel=single")
    jobs.train(tmp_path / mode, *common, f"parallel={mode}", nproc=2)
    single, two = jobs.train_rows(tmp_path / "single"), jobs.train_rows(tmp_path / mode)
    # aux_loss: the z-loss, out of the model's forward on both ranks
    assert_steps_match(two, single, range(1, 13), loss=1e-4, aux_loss=1e-4)
    biases = [
        {k: v for k, v in load_exported(tmp_path / run).state_dict().items() if k.endswith("expert_bias")}
        for run in ("single", mode)
    ]
    assert biases[0].keys() == biases[1].keys() and len(biases[0]) == 2
    for name, bias in biases[0].items():
        assert bias.abs().sum() > 0
        torch.testing.assert_close(biases[1][name], bias, rtol=0, atol=0)


@pytest.mark.slow
def test_moe_auxiliary_losses_under_fsdp_give_one_process_gradients_with_and_without_checkpointing(
    tmp_path, jobs
):
    # The balance and z-losses leave every block through its output, so FSDP gathers the router's weights
    # for their backward and they reach the gradients; activation checkpointing reruns the block in backward.
    common = (
        "model=micro_moe",
        "model.moe_aux_coef=0.1",
        "model.moe_z_coef=0.01",
        "trainer.max_steps=4",
        "trainer.diag_interval=0",
        "trainer.eval_interval=0",
        "checkpoint.interval=0",
    )
    jobs.train(tmp_path / "single", *common, "parallel=single")
    single = jobs.train_rows(tmp_path / "single")
    for ac in ("none", "full"):
        run = tmp_path / f"fsdp_ac_{ac}"
        jobs.train(run, *common, "parallel=fsdp", f"parallel.activation_checkpointing={ac}", nproc=2)
        fsdp = jobs.train_rows(run)
        assert sorted(fsdp) == [1, 2, 3, 4]
        # fp32; measured: equal losses, grad norms up to 9e-6 apart (so without the losses too); a loss FSDP
        # does not see moves the grad norm by 1.5e-4 to 2e-3
        assert_steps_match(fsdp, single, range(1, 5), loss=1e-5, aux_loss=1e-5, grad_norm=3e-5)


@pytest.mark.slow
def test_expert_parallel_on_two_ranks_matches_one_process_and_resumes_on_one_rank(tmp_path, jobs):
    # Each rank holds 2 of micro_moe's 4 experts and sends the other rank's tokens there (all-to-all on
    # gloo); the losses are one process's, which sees the whole global batch, up to fp32 reduction order.
    common = (
        "model=micro_moe",
        "trainer.diag_interval=0",
        "trainer.eval_interval=0",
        "checkpoint.interval=4",
    )
    jobs.train(tmp_path / "single", *common, "parallel=single")
    ep_run = tmp_path / "ep"
    jobs.train(ep_run, *common, "parallel=fsdp", "parallel.ep=2", "trainer.stop_at_step=8", nproc=2)
    # The step-8 checkpoint (experts sharded over 2 ranks) resumes on one rank: DCP reshards them.
    jobs.train(ep_run, *common, "parallel=single", "checkpoint.resume=auto")
    single, ep = jobs.train_rows(tmp_path / "single"), jobs.train_rows(ep_run)
    assert sorted(ep) == list(range(1, 13))
    # fp32 on both sides; measured: equal, or 1 ulp apart (6e-8 relative). AdamW hides a wrong gradient scale
    # from the loss for a while; the norm shows it at once.
    assert_steps_match(ep, single, range(1, 13), loss=1e-5, grad_norm=1e-5)


@pytest.mark.slow
def test_expert_parallel_in_fsdp_and_hsdp_on_four_ranks_matches_one_process_over_resumes(tmp_path, jobs):
    # Steps 1-2: fsdp 4 x ep 2, each expert FSDP-sharded over the 2 ranks holding it. Steps 3-4, resumed from
    # that checkpoint: hsdp 2 x 2 x ep 2, each expert replicated over the 2 replicas. Steps 5-6: one rank.
    # Every step is one process's, so the expert gradients are averaged over exactly the right ranks.
    common = (
        "model=micro_moe",
        "trainer.global_batch_tokens=256",  # 4 ranks x micro_batch 2 x seq_len 32
        "trainer.max_steps=6",
        "trainer.diag_interval=0",
        "trainer.eval_interval=0",
        "checkpoint.interval=2",
    )
    jobs.train(tmp_path / "single", *common, "parallel=single")
    ep_run = tmp_path / "ep"
    jobs.train(ep_run, *common, "parallel=fsdp", "parallel.ep=2", "trainer.stop_at_step=2", nproc=4)
    hsdp = ("parallel=hsdp", "parallel.ep=2", "checkpoint.resume=auto", "trainer.stop_at_step=4")
    jobs.train(ep_run, *common, *hsdp, nproc=4)
    jobs.train(ep_run, *common, "parallel=single", "checkpoint.resume=auto")
    single, ep = jobs.train_rows(tmp_path / "single"), jobs.train_rows(ep_run)
    assert sorted(ep) == list(range(1, 7))
    # Grad norm measured up to 1.0e-5 apart, as fsdp 4 and hsdp 2 x 2 without EP are (fp32 reduction order);
    # a gradient averaged over the wrong ranks is off by a factor of 2 or more in the expert part.
    assert_steps_match(ep, single, range(1, 7), loss=1e-5, grad_norm=3e-5)


@pytest.mark.slow
def test_moe_under_tensor_parallel_with_and_without_experts_split_matches_one_process(tmp_path, jobs):
    # Steps 1-2: fsdp 2 x tp 2 x ep 2 (each TP rank routes its own sequence shard, over the ep ranks at its
    # TP index). Steps 3-4, resumed from that checkpoint: tp 2 alone (whole experts on both TP ranks).
    common = (
        "model=micro_moe",
        "trainer.max_steps=4",
        "trainer.diag_interval=0",
        "trainer.eval_interval=0",
        "checkpoint.interval=2",
    )
    jobs.train(tmp_path / "single", *common, "parallel=single")
    run = tmp_path / "tp"
    split = ("parallel=fsdp", "parallel.tp=2", "parallel.ep=2", "trainer.stop_at_step=2")
    jobs.train(run, *common, *split, nproc=4)
    jobs.train(run, *common, "parallel.tp=2", "checkpoint.resume=auto", nproc=2)
    single, tp = jobs.train_rows(tmp_path / "single"), jobs.train_rows(run)
    assert sorted(tp) == list(range(1, 5))
    # measured: loss equal or 1 ulp apart, grad norm up to 8e-6 (as fsdp 4's)
    assert_steps_match(tp, single, range(1, 5), loss=1e-5, grad_norm=3e-5)


def test_expert_parallel_refuses_layouts_it_cannot_run_naming_the_fields():
    refusals = [  # (override, world size, what the error names)
        ("model=micro", 2, "parallel.ep=2 needs an MoE model"),
        ("model.moe_experts=3", 2, "parallel.ep=2 must divide model.moe_experts=3"),
        ("parallel.dp_shard=3", 3, "parallel.ep=2 must divide parallel.dp_shard=3"),
        ("parallel.ep=0", 2, "parallel.ep=0 must be a positive degree"),
    ]
    for override, world, named in refusals:
        cfg = ["model=micro_moe", "model.n_kv_heads=4", "parallel.dp_shard=2", "parallel.ep=2", override]
        with pytest.raises(ConfigError, match=re.escape(named)):
            compose_run_config(cfg, world_size=world)
    # Under TP each rank routes its own sequence shard: losses taken over a shard are refused, not run wrong.
    with pytest.raises(ConfigError, match=re.escape("model.moe_z_coef=0.001 with parallel.tp=2: each TP")):
        compose_run_config(["model=micro_moe", "model.moe_z_coef=1e-3", "parallel.tp=2"], world_size=2)
