"""Downstream multiple-choice tasks scored during `python -m train`: at the interval and the end, beside the
validation loss in metrics.jsonl, the same after a stop and resume as in a straight run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("data_root")

TASKS = Path(__file__).resolve().parents[1] / "infer" / "tasks"
SHORT = ("trainer.max_steps=6", "trainer.eval_interval=0", "trainer.diag_interval=0", "checkpoint.interval=0")


def local_task(tmp_path: Path) -> Path:
    """tests/infer/tasks/python_mc.yaml with its JSONL beside it under tmp_path (an absolute data path)."""
    data = shutil.copy(TASKS / "python_mc.jsonl", tmp_path / "python_mc.jsonl")
    text = (TASKS / "python_mc.yaml").read_text().replace("tests/infer/tasks/python_mc.jsonl", str(data))
    path = tmp_path / "python_mc.yaml"
    path.write_text(text)
    return path


def downstream_rows(jobs, run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in jobs.metrics(run_dir) if any(k.startswith("downstream/") for k in r)}


def test_scores_are_logged_at_the_interval_and_a_resumed_run_logs_the_same(tmp_path, jobs) -> None:
    task = local_task(tmp_path)
    scored = ("trainer.downstream_interval=4", f"trainer.downstream_tasks=[{task}]")
    straight = tmp_path / "straight"
    assert jobs.in_process(straight, *SHORT, *scored).returncode == 0
    rows = downstream_rows(jobs, straight)
    assert sorted(rows) == [4, 6]  # every 4 steps, and the last step
    for row in rows.values():
        assert set(row) == {"step", "downstream/diffv2_python_mc/acc", "downstream/diffv2_python_mc/acc_norm"}
        assert all(0.0 <= v <= 1.0 for k, v in row.items() if k != "step")

    resumed = tmp_path / "resumed"
    assert jobs.in_process(resumed, *SHORT, *scored, "trainer.stop_at_step=5").returncode == 0
    assert sorted(downstream_rows(jobs, resumed)) == [4]
    assert jobs.in_process(resumed, *SHORT, *scored).returncode == 0
    assert downstream_rows(jobs, resumed) == rows


def test_a_task_file_that_cannot_be_scored_is_refused_before_training(tmp_path, jobs) -> None:
    bad = tmp_path / "gen.yaml"
    bad.write_text((TASKS / "python_gen.yaml").read_text())
    proc = jobs.in_process(
        tmp_path / "run", *SHORT, "trainer.downstream_interval=2", f"trainer.downstream_tasks=[{bad}]"
    )
    assert proc.returncode == 2
    assert "trainer.downstream_tasks[0]" in proc.stderr and "multiple_choice" in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
