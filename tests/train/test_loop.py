"""The loop in this process (one rank, gloo): what it logs, when the checkpointer saves, what it returns.

The end-to-end tests drive the same loop through torchrun; these check its decisions directly, in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conf import compose, validated
from train.loop import RunResult
from train.run import run_training

pytestmark = pytest.mark.usefixtures("data_root")

TRAIN_ROW_KEYS = {
    "step",
    "loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "tokens_per_s_per_device",
    "mfu",
    "peak_mem_gb",
    "tokens_seen",
    "loss_spike",
    "grad_spike",
    "loss_spikes",
    "grad_spikes",
}
QUIET = ["trainer.eval_interval=0", "trainer.diag_interval=0", "checkpoint.export_safetensors=false"]


def train_here(jobs, run_dir: Path, *overrides: str) -> RunResult:
    """`python -m train` on the tiny config, run in this process."""
    cfg = compose([*jobs.tiny, *QUIET, f"run.dir={run_dir}", *overrides])
    return run_training(validated(cfg, world_size=1), OmegaConf.to_yaml(cfg, resolve=True))


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def checkpoints(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))


def test_loop_logs_checkpoints_on_its_interval_and_once_at_the_end(tmp_path, jobs):
    run_dir = tmp_path / "run"
    result = train_here(
        jobs,
        run_dir,
        "trainer.max_steps=7",
        "trainer.log_interval=4",
        "checkpoint.interval=3",
        "checkpoint.keep_last=5",
    )
    assert (result.step, result.stopped_by, result.tokens_seen) == (7, None, 7 * 128)
    # Every 3rd step, then the last one: the interval skips max_steps and the end saves it once.
    assert checkpoints(run_dir) == ["step_00000003", "step_00000006", "step_00000007"]
    logged = {row["step"]: row for row in rows(run_dir) if "loss" in row and "event" not in row}
    assert sorted(logged) == [1, 4, 7]  # the first step, every log_interval, the last
    assert all(set(row) == TRAIN_ROW_KEYS for row in logged.values())
    assert (result.loss, result.tokens_per_s) == (logged[7]["loss"], logged[7]["tokens_per_s"])
    assert rows(run_dir)[-1] == {"event": "end", **result.summary()}
    # what the model is, recorded before the first step for run analysis (analysis/ builds no model)
    start = rows(run_dir)[0]
    assert (start["step"], start["event"]) == (0, "start")
    assert start["params"] > 0 and start["flops_per_token"] > 0


def test_stop_at_step_checkpoints_and_says_so_and_the_resumed_run_matches_a_straight_one(tmp_path, jobs):
    straight = train_here(jobs, tmp_path / "straight", "trainer.max_steps=6", "trainer.log_interval=1")
    run_dir = tmp_path / "stopped"
    common = ("trainer.max_steps=6", "trainer.log_interval=1", "checkpoint.interval=0")
    stopped = train_here(jobs, run_dir, *common, "trainer.stop_at_step=4")
    assert (stopped.step, stopped.stopped_by, stopped.stopped) == (4, "trainer.stop_at_step", True)
    assert checkpoints(run_dir) == ["step_00000004"]
    assert not any(row.get("event") == "end" for row in rows(run_dir))

    resumed = train_here(jobs, run_dir, *common)
    assert not resumed.stopped and resumed.step == 6 and resumed.loss == straight.loss
    assert [row["step"] for row in rows(run_dir) if "lr" in row] == [1, 2, 3, 4, 5, 6]
    saved = {p: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").rglob("*") if p.is_file()}

    # Resumed at max_steps: nothing to train, and the checkpoint it loaded is not written again.
    again = train_here(jobs, run_dir, *common)
    assert again.step == 6 and again.loss is None
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").rglob("*") if p.is_file()} == saved


def test_a_checkpoint_holds_the_run_config_once_as_its_config_yaml(tmp_path, jobs):
    from torch.distributed.checkpoint import FileSystemReader

    run_dir = tmp_path / "run"
    train_here(jobs, run_dir, "trainer.max_steps=3", "checkpoint.interval=0")
    step = run_dir / "checkpoints" / "step_00000003"
    saved = FileSystemReader(str(step)).read_metadata().state_dict_metadata
    assert not [key for key in saved if "config" in key]  # not inside the state as well
    assert (step / "config.yaml").read_text() == (run_dir / "config.yaml").read_text()
    assert OmegaConf.create((step / "config.yaml").read_text()).trainer.max_steps == 3


def test_the_run_config_is_not_edited_by_what_the_data_decides(tmp_path, jobs):
    run_dir = tmp_path / "run"
    overrides = [*jobs.tiny, *QUIET, f"run.dir={run_dir}", "trainer.max_steps=3", "model.doc_mask=true"]
    cfg = compose([*overrides, "checkpoint.export_safetensors=true"])
    run_cfg = validated(cfg, world_size=1)
    run_training(run_cfg, OmegaConf.to_yaml(cfg, resolve=True))
    assert run_cfg.model.eot_token == -1  # as validated: the data's value went to the model's own copy
    exported = json.loads((run_dir / "model_config.json").read_text())
    assert exported["doc_mask"] and exported["eot_token"] >= 0
