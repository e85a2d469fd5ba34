"""Tensor + sequence parallel through torchrun on gloo: equal to one process step for step, with each DIFF
pair and its K/V heads on one rank (read from the sharded weights).

Tolerances (fp32 on CPU): the TP ranks compute the same sums split in two and added in another order, so the
loss agrees to rel 1e-5 and the grad norm to rel 1e-4 over 5 steps (measured: at most 1.2e-7 and 1.1e-5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("data_root")]

FIVE_STEPS = ("trainer.stop_at_step=5", "trainer.diag_interval=5", "checkpoint.enabled=false")
VARIANTS = {
    "baseline": ("attention=baseline",),
    # V1's unit is a pair of key sub-heads with one 2d-wide value: 4 K/V sub-heads make 2 units for TP 2
    "diff_v1": ("attention=diff_v1", "model.n_kv_heads=4"),
    "diff_v2": ("attention=diff_v2",),
}


def _assert_same_steps(jobs, run_dir, reference_dir, steps, loss_rel=1e-5, grad_rel=1e-4):
    run, reference = jobs.train_rows(run_dir), jobs.train_rows(reference_dir)
    assert sorted(run) == list(steps)
    for step in steps:
        assert run[step]["loss"] == pytest.approx(reference[step]["loss"], rel=loss_rel), step
        assert run[step]["grad_norm"] == pytest.approx(reference[step]["grad_norm"], rel=grad_rel), step


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tp2_matches_one_process_for_five_steps(tmp_path, jobs, variant):
    overrides = (*VARIANTS[variant], *FIVE_STEPS)
    jobs.train(tmp_path / "one", "parallel=single", *overrides)
    proc = jobs.train(tmp_path / "tp2", "parallel=fsdp", "parallel.tp=2", *overrides, nproc=2)
    assert "[tp 2]" in proc.stdout
    _assert_same_steps(jobs, tmp_path / "tp2", tmp_path / "one", range(1, 6))
    one = jobs.train_rows(tmp_path / "one")
    assert min(one[step]["loss"] for step in range(2, 6)) < one[1]["loss"]  # the steps do train


def test_tp2_with_the_chunked_loss_matches_one_process(tmp_path, jobs):
    """The fused chunked loss under TP: each rank scores 24-token chunks of the gathered sequence on its own
    vocabulary shard (loss parallel); 64 tokens per micro-batch make two full chunks and a partial one."""
    overrides = (*FIVE_STEPS, "model.loss_chunk_tokens=24")
    jobs.train(tmp_path / "one", "parallel=single", *FIVE_STEPS, "model.loss_chunk_tokens=0")
    proc = jobs.train(tmp_path / "tp2", "parallel=fsdp", "parallel.tp=2", *overrides, nproc=2)
    assert "[tp 2]" in proc.stdout
    _assert_same_steps(jobs, tmp_path / "tp2", tmp_path / "one", range(1, 6))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_diff_pair_and_its_kv_heads_sit_on_one_tp_rank(tmp_path, jobs, variant):
    """Which heads each rank holds is read from its weight shards; the pairs and GQA groups come from the
    model's definition (model/attention.py), not from the plan."""
    overrides = [*jobs.tiny, *VARIANTS[variant], "parallel=fsdp", "parallel.tp=2"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    script = jobs.repo / "tests" / "train" / "tp_shards.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*launcher, str(script), str(tmp_path), *overrides]
    proc = subprocess.run(cmd, cwd=jobs.repo, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    n_heads, n_kv = 4, 4 if variant == "diff_v1" else 2  # conf/model/micro.yaml's n_heads
    owner = {}  # (projection, global head) -> rank
    for rank, held in enumerate(ranks):
        for proj, heads in held.items():
            owner.update({(proj, h): rank for h in heads})
    if variant == "diff_v2":  # q heads 2j, 2j+1 read kv head of their group; lambda row j
        group = 2 * n_heads // n_kv
        units = [([2 * j, 2 * j + 1], (2 * j) // group, j) for j in range(n_heads)]
    elif variant == "diff_v1":  # sub-heads 2p, 2p+1 read key sub-heads 2g, 2g+1 and value g
        group = (n_heads // 2) // (n_kv // 2)
        units = [([2 * p, 2 * p + 1], p // group, None) for p in range(n_heads // 2)]
    else:
        group = n_heads // n_kv
        units = [([j], j // group, None) for j in range(n_heads)]
    for q_heads, kv, lam in units:
        keys = [2 * kv, 2 * kv + 1] if variant == "diff_v1" else [kv]
        places = {owner[("q_proj", h)] for h in q_heads} | {owner[("k_proj", k)] for k in keys}
        places.add(owner[("v_proj", kv)])
        if lam is not None:
            places.add(owner[("lambda_proj", lam)])
        assert len(places) == 1, f"{variant}: query heads {q_heads} and K/V {kv} split over ranks {places}"
    # the layer really is split: each rank holds half of the query heads, none twice
    assert len(ranks[0]["q_proj"]) == len(ranks[1]["q_proj"]) > 0
    assert not set(ranks[0]["q_proj"]) & set(ranks[1]["q_proj"])


@pytest.fixture(scope="module")
def one_process_8_steps(tmp_path_factory, jobs):
    """DIFF V2, one process, 8 steps: the run every layout is compared with."""
    run_dir = tmp_path_factory.mktemp("runs") / "one"
    jobs.train(run_dir, "parallel=single", "trainer.stop_at_step=8")
    return run_dir


def test_fsdp2_x_tp2_on_four_ranks_matches_one_process(tmp_path, jobs, one_process_8_steps):
    """2-D: FSDP over 2 ranks, TP inside pairs of ranks; 2 data-parallel ranks make the global batch in one
    micro-step where one process accumulates two, so sums run in another order: loss rel 1e-4, grad norm rel
    1e-3 (as the FSDP 2 test)."""
    proc = jobs.train(tmp_path / "2d", "parallel=fsdp", "parallel.tp=2", *FIVE_STEPS, nproc=4)
    assert "[fsdp 2 x tp 2]" in proc.stdout and "x 2 data-parallel ranks" in proc.stdout
    _assert_same_steps(jobs, tmp_path / "2d", one_process_8_steps, range(1, 6), 1e-4, 1e-3)


def test_checkpoint_moves_between_layouts_with_its_loader_state(tmp_path, jobs, one_process_8_steps):
    """1 rank (steps 1-2) -> FSDP 2 (3-4) -> FSDP 2 x TP 2 (5-6) -> TP 2 (7-8), each resuming the
    previous layout's checkpoint (model, optimizer, schedule and the loader's global cursor), equals 8
    straight steps."""
    run_dir = tmp_path / "moved"
    layouts = [
        (("parallel=single",), 0, 2),
        (("parallel=fsdp",), 2, 4),
        (("parallel=fsdp", "parallel.tp=2"), 4, 6),
        (("parallel=fsdp", "parallel.tp=2"), 2, 8),
    ]
    for overrides, nproc, stop in layouts:
        proc = jobs.train(
            run_dir, *overrides, f"trainer.stop_at_step={stop}", "checkpoint.resume=auto", nproc=nproc
        )
        if stop > 2:
            assert f"step_{stop - 2:08d}" in proc.stdout
    moved, straight = jobs.train_rows(run_dir), jobs.train_rows(one_process_8_steps)
    assert sorted(moved) == list(range(1, 9))
    for step in range(1, 9):
        assert moved[step]["lr"] == straight[step]["lr"], step
        assert moved[step]["loss"] == pytest.approx(straight[step]["loss"], rel=1e-4), step
        assert moved[step]["grad_norm"] == pytest.approx(straight[step]["grad_norm"], rel=1e-3), step
