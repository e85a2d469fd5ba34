"""Exact resume: same world size, another world size, after a killed rank, past an incomplete checkpoint."""

from __future__ import annotations

import shutil

import pytest
from omegaconf import OmegaConf

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("data_root")]


def test_stop_at_6_then_resume_auto_is_bit_identical_to_12_straight(
    tmp_path, jobs, fsdp_straight, fsdp_stopped_at_6
):
    run_dir = jobs.copy_run(fsdp_stopped_at_6, tmp_path / "resumed")
    assert max(jobs.train_rows(run_dir)) == 6
    proc = jobs.train(run_dir, "parallel=fsdp", "checkpoint.resume=auto", nproc=2)
    assert "resumed from" in proc.stdout and "step_00000006" in proc.stdout
    straight, resumed = jobs.train_rows(fsdp_straight), jobs.train_rows(run_dir)
    for step in range(7, 13):
        assert (resumed[step]["loss"], resumed[step]["lr"]) == (
            straight[step]["loss"],
            straight[step]["lr"],
        ), step
    assert sorted(resumed) == list(range(1, 13))  # one history in metrics.jsonl


def test_saved_at_two_ranks_resumes_at_one_from_same_step_and_data(
    tmp_path, jobs, fsdp_straight, fsdp_stopped_at_6
):
    run_dir = jobs.copy_run(fsdp_stopped_at_6, tmp_path / "one_rank")
    jobs.train(run_dir, "parallel=single")
    straight, resumed = jobs.train_rows(fsdp_straight), jobs.train_rows(run_dir)
    assert resumed[7]["tokens_seen"] == straight[7]["tokens_seen"] == 7 * 128
    for step in range(7, 13):
        # Same weights, optimizer state and batches; only the reduction order differs (1 rank + accumulation).
        assert resumed[step]["loss"] == pytest.approx(straight[step]["loss"], rel=1e-4), step
        assert resumed[step]["lr"] == straight[step]["lr"]


def test_killed_rank_restarts_from_last_checkpoint_and_ends_with_same_loss(tmp_path, jobs, fsdp_straight):
    run_dir = tmp_path / "killed"
    proc = jobs.train(
        run_dir,
        "parallel=fsdp",
        "debug.fault=crash",
        "debug.fault_step=8",
        "debug.fault_rank=1",
        "wandb.mode=offline",
        nproc=2,
        torchrun_args=("--max-restarts=1",),
    )
    out = proc.stdout + proc.stderr
    assert "debug.fault=crash at step 8" in out
    assert "resumed from" in out and "step_00000006" in out
    final, reference = jobs.metrics(run_dir)[-1], jobs.metrics(fsdp_straight)[-1]
    assert final["event"] == "end" and final["step"] == 12
    assert final["loss"] == reference["loss"]
    assert sorted(jobs.train_rows(run_dir)) == list(range(1, 13))
    # Both attempts logged to one wandb run: the id came back from the checkpoint.
    attempts = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(attempts) == 2 and len({p.name.rsplit("-", 1)[1] for p in attempts}) == 1


def test_incomplete_checkpoint_is_skipped_for_previous_complete_one(tmp_path, jobs, fsdp_stopped_at_6):
    run_dir = jobs.copy_run(fsdp_stopped_at_6, tmp_path / "incomplete")
    ckpts = run_dir / "checkpoints"
    torn = shutil.copytree(ckpts / "step_00000006", ckpts / "step_00000009")
    (torn / ".metadata").unlink()  # a save that died before DCP wrote its metadata
    shutil.copytree(ckpts / "step_00000006", ckpts / ".tmp_step_00000010")  # a save never published
    proc = jobs.train(run_dir, "parallel=single", "trainer.stop_at_step=7")
    assert "step_00000006 at step 6" in proc.stdout
    assert max(jobs.train_rows(run_dir)) == 7
    assert not (ckpts / ".tmp_step_00000010").exists()


def test_resolved_config_saved_with_run_and_each_checkpoint(jobs, fsdp_straight):
    run_cfg = OmegaConf.load(fsdp_straight / "config.yaml")
    assert run_cfg.parallel.dp_shard == -1 and run_cfg.trainer.max_steps == 12
    assert run_cfg.run.dir == str(fsdp_straight)  # resolved: no interpolations left
    assert run_cfg.model.vocab_size == run_cfg.data.tokenizer.vocab_size
    ckpts = sorted((fsdp_straight / "checkpoints").glob("step_*"))
    assert [p.name for p in ckpts] == ["step_00000009", "step_00000012"]  # keep_last=2
    for ckpt in ckpts:
        assert OmegaConf.load(ckpt / "config.yaml") == run_cfg
