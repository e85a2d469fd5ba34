"""FSDP on 2 ranks against one process, and gradient accumulation against one large micro-batch."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("data_root")]


@pytest.fixture(scope="module")
def single_accum2(tmp_path_factory, jobs):
    """One process, micro_batch 2: two micro-steps per optimizer step, the same global batch as 2 ranks."""
    run_dir = tmp_path_factory.mktemp("runs") / "single_accum2"
    jobs.train(run_dir, "parallel=single")
    return run_dir


def test_fsdp_two_ranks_match_single_process(jobs, fsdp_straight, single_accum2):
    fsdp, single = jobs.train_rows(fsdp_straight), jobs.train_rows(single_accum2)
    assert single[1]["loss"] > single[12]["loss"]
    for step in range(1, 13):
        assert fsdp[step]["lr"] == single[step]["lr"]
        assert fsdp[step]["loss"] == pytest.approx(single[step]["loss"], rel=1e-4), step
        assert fsdp[step]["grad_norm"] == pytest.approx(single[step]["grad_norm"], rel=1e-3), step


def test_grad_accumulation_matches_one_large_micro_batch(tmp_path, jobs, single_accum2):
    jobs.train(tmp_path / "mb4", "parallel=single", "trainer.micro_batch=4")
    accum, whole = jobs.train_rows(single_accum2), jobs.train_rows(tmp_path / "mb4")
    for step in range(1, 13):
        assert whole[step]["loss"] == pytest.approx(accum[step]["loss"], rel=1e-5), step
        assert whole[step]["grad_norm"] == pytest.approx(accum[step]["grad_norm"], rel=1e-4), step


@pytest.mark.parametrize(
    "overrides",
    [
        ("parallel=ddp", "parallel.activation_checkpointing=every_k"),
        ("parallel=hsdp", "parallel.dp_replicate=2", "parallel.activation_checkpointing=full"),
        ("parallel=fsdp", "model.loss_chunk_tokens=24"),
        ("parallel=fsdp", "parallel.activation_checkpointing=selective"),
    ],
    ids=["ddp-ac_every_k", "hsdp-ac_full", "fsdp-chunked_loss", "fsdp-ac_selective"],
)
def test_ddp_and_hsdp_with_checkpointed_blocks_match_single_process(tmp_path, jobs, single_accum2, overrides):
    jobs.train(tmp_path / "run", *overrides, "trainer.stop_at_step=4", nproc=2)
    parallel, single = jobs.train_rows(tmp_path / "run"), jobs.train_rows(single_accum2)
    assert sorted(parallel) == [1, 2, 3, 4]
    for step in parallel:
        assert parallel[step]["loss"] == pytest.approx(single[step]["loss"], rel=1e-4), step
        assert parallel[step]["grad_norm"] == pytest.approx(single[step]["grad_norm"], rel=1e-3), step


def test_gpu_recipe_on_cpu_bf16_compile_fsdp_then_resume_plain(tmp_path, jobs, single_accum2):
    """The GPU recipe (FSDP2 with bf16 MixedPrecisionPolicy, compiled and checkpointed blocks) through the
    same code on CPU with gloo; its checkpoint then resumes in one fp32 process without compile, because
    compiling in place keeps the parameter names."""
    run_dir = tmp_path / "run"
    gpu_recipe = (
        "parallel=fsdp",
        "parallel.mixed_precision=bf16",
        "parallel.compile=true",
        "parallel.activation_checkpointing=full",
    )
    jobs.train(run_dir, *gpu_recipe, "trainer.stop_at_step=3", nproc=2)
    bf16, fp32 = jobs.train_rows(run_dir), jobs.train_rows(single_accum2)
    assert sorted(bf16) == [1, 2, 3]
    for step in bf16:  # bf16 matmuls: close to fp32, and not bit-equal (the policy really applies)
        assert bf16[step]["loss"] == pytest.approx(fp32[step]["loss"], rel=1e-3), step
    assert any(bf16[step]["loss"] != fp32[step]["loss"] for step in bf16)

    jobs.train(run_dir, "parallel=single", "checkpoint.resume=auto")
    resumed = jobs.train_rows(run_dir)
    assert sorted(resumed) == list(range(1, 13))
    assert resumed[12]["loss"] == pytest.approx(fp32[12]["loss"], rel=1e-3)
    assert resumed[12]["loss"] < resumed[1]["loss"]
