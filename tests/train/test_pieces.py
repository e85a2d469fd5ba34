"""Checkpoint discovery and value validation: the pieces the end-to-end tests rely on."""

from __future__ import annotations

from pathlib import Path

import pytest

from conf import ConfigError, RunConfig, validate_run_config
from train.checkpoint import CheckpointError, complete_checkpoints, resolve_resume
from train.checksums import write_checksums
from train.config import grad_accum_steps


def _fake_checkpoint(root: Path, name: str, complete: bool) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "__0_0.distcp").write_bytes(b"x")
    if complete:
        (path / ".metadata").write_bytes(b"x")
        write_checksums(path)
    return path


def test_resume_auto_picks_latest_complete(tmp_path):
    _fake_checkpoint(tmp_path, "step_00000003", complete=True)
    good = _fake_checkpoint(tmp_path, "step_00000006", complete=True)
    _fake_checkpoint(tmp_path, "step_00000009", complete=False)  # crashed before DCP wrote its metadata
    _fake_checkpoint(tmp_path, ".tmp_step_00000012", complete=True)  # never published
    assert resolve_resume("auto", tmp_path) == good
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_00000003", "step_00000006"]
    assert resolve_resume("none", tmp_path) is None
    assert resolve_resume("auto", tmp_path / "missing") is None
    with pytest.raises(CheckpointError, match=r"no \.metadata; checkpoint\.resume"):
        resolve_resume(str(tmp_path / "step_00000009"), tmp_path)


def test_grad_accum_derived_from_global_batch():
    cfg = RunConfig()
    cfg.trainer.seq_len, cfg.trainer.micro_batch, cfg.trainer.global_batch_tokens = 64, 4, 2048
    assert grad_accum_steps(cfg.trainer, dp_size=1) == 8
    assert grad_accum_steps(cfg.trainer, dp_size=4) == 2
    with pytest.raises(ConfigError, match="trainer.global_batch_tokens=2048"):
        grad_accum_steps(cfg.trainer, dp_size=3)


@pytest.mark.parametrize(
    ("key", "value", "world"),
    [
        ("parallel.dp_shard", 0, 1),
        ("optim.schedule", "linear", 1),
        ("parallel.activation_checkpointing", "some", 1),
        ("wandb.mode", "maybe", 1),
        ("trainer.seq_len", 4096, 1),
        ("parallel.dp_replicate", 1, 2),
        ("trainer.spike_window", 5, 1),
        ("trainer.loss_spike_jump", -0.1, 1),
        ("trainer.loss_spike_deviations", float("nan"), 1),
        ("trainer.grad_spike_factor", 0.5, 1),
        ("trainer.diag_sequences", 0, 1),
    ],
)
def test_bad_values_name_their_field(key, value, world):
    cfg = RunConfig()
    section, field = key.split(".")
    setattr(getattr(cfg, section), field, value)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_run_config(cfg, world_size=world)
