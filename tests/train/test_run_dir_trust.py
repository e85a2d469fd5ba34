"""A run directory belongs to one run: a fresh run does not mix with (or delete) another run's checkpoints
and metrics, two jobs never write it at once, and run.name cannot point outside runs/ (exit 5, or 2 for
the name).

In-process `python -m train` jobs, except the one that must hold the lock from another process.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("data_root")

SHORT = ("trainer.max_steps=6", "trainer.eval_interval=0", "trainer.diag_interval=0")
EXIT_BAD_VALUE, EXIT_RUN_DIR = 2, 5


@pytest.fixture
def saved_run(saved_6_steps: Path) -> Path:
    return saved_6_steps


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_fresh_run_into_a_dir_with_another_runs_checkpoints_is_refused_and_deletes_nothing(
    tmp_path, jobs, saved_run
):
    run_dir = jobs.copy_run(saved_run, tmp_path / "run")
    before = _snapshot(run_dir)
    proc = jobs.in_process(
        run_dir, *SHORT, "checkpoint.resume=none", "trainer.stop_at_step=2", "optim.lr=3e-3"
    )
    assert proc.returncode == EXIT_RUN_DIR, proc.stdout[-2000:]
    assert f"run dir {run_dir} holds another run's output: checkpoints/step_00000003" in proc.stderr
    assert "run.overwrite=true" in proc.stderr
    assert _snapshot(run_dir) == before


def test_overwrite_moves_the_old_run_aside_and_resume_continues_the_new_one(tmp_path, jobs, saved_run):
    run_dir = jobs.copy_run(saved_run, tmp_path / "run")
    old_metrics = (run_dir / "metrics.jsonl").read_text()
    proc = jobs.in_process(
        run_dir, *SHORT, "checkpoint.resume=none", "trainer.stop_at_step=2", "run.overwrite=true"
    )
    assert proc.returncode == 0, proc.stderr
    [replaced] = (run_dir / "replaced").iterdir()
    assert sorted(p.name for p in (replaced / "checkpoints").iterdir()) == ["step_00000003", "step_00000006"]
    assert (replaced / "metrics.jsonl").read_text() == old_metrics
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_00000002"]
    proc = jobs.in_process(run_dir, *SHORT, "trainer.stop_at_step=3")
    assert "resumed from" in proc.stdout and "step_00000002 at step 2" in proc.stdout


def test_resume_from_an_older_step_of_the_same_dir_is_refused(tmp_path, jobs, saved_run):
    """keep_last would otherwise delete the new branch's checkpoints for the old run's newer ones."""
    run_dir = jobs.copy_run(saved_run, tmp_path / "run")
    older = run_dir / "checkpoints" / "step_00000003"
    proc = jobs.in_process(run_dir, *SHORT, f"checkpoint.resume={older}", "optim.lr=3e-3")
    assert proc.returncode == EXIT_RUN_DIR
    assert "checkpoints/step_00000006; resuming from step 3" in proc.stderr


def test_only_checkpoint_without_metadata_is_refused_and_metrics_are_kept(tmp_path, jobs, saved_run):
    run_dir = jobs.copy_run(saved_run, tmp_path / "run")
    ckpts = run_dir / "checkpoints"
    for step in ("step_00000003", "step_00000006"):
        (ckpts / step / ".metadata").unlink()  # saves that died before DCP wrote their metadata
    metrics = (run_dir / "metrics.jsonl").read_text()
    proc = jobs.in_process(run_dir, *SHORT, "trainer.max_steps=8")
    assert proc.returncode == EXIT_RUN_DIR
    assert "checkpoints/step_00000006 (incomplete: no .metadata)" in proc.stderr
    assert (run_dir / "metrics.jsonl").read_text() == metrics


@pytest.mark.parametrize("name", ["../escaped", "a/../../escaped", "/tmp/escaped-abs"])
def test_run_name_outside_runs_is_refused_before_anything_is_written(tmp_path, jobs, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    target = Path(name) if name.startswith("/") else tmp_path / "runs" / name
    proc = jobs.in_process(None, *SHORT, f"run.name={name}")
    assert proc.returncode == EXIT_BAD_VALUE, proc.stdout[-2000:]
    assert f"run.name={name!r} must be a relative name without '..'" in proc.stderr
    assert not target.resolve().exists()
    assert not (tmp_path / "escaped").exists()


def test_second_job_into_a_run_dir_fails_at_once_naming_the_holder_and_a_killed_holders_lock_is_recovered(
    tmp_path, jobs, saved_run
):
    run_dir = jobs.copy_run(saved_run, tmp_path / "run")
    first = subprocess.Popen(
        # keep_last: step 8 must outlive the steps this job trains while the second one is refused (a race
        # with the default 2 on a busy machine).
        jobs.command(
            run_dir,
            "trainer.max_steps=100000",
            "trainer.eval_interval=0",
            "checkpoint.interval=2",
            "checkpoint.keep_last=1000",
        ),
        cwd=jobs.repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (run_dir / "checkpoints" / "step_00000008").exists():
            time.sleep(0.2)
        assert (run_dir / "checkpoints" / "step_00000008").is_dir(), "the first job wrote no checkpoint"
        assert first.poll() is None, "the first job ended before the second started"
        started = time.monotonic()
        second = jobs.in_process(run_dir, *SHORT, "trainer.max_steps=100")
        assert second.returncode == EXIT_RUN_DIR, second.stdout[-2000:]
        assert time.monotonic() - started < 10  # at once, not after training
        assert f"run dir {run_dir} is in use by another job: pid {first.pid} on host" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The kernel dropped the dead job's lock: the next job takes the dir over and resumes its last checkpoint
    # (already past max_steps=6: it only evaluates and exports).
    third = jobs.in_process(run_dir, *SHORT)
    assert third.returncode == 0, third.stderr
    assert "resumed from" in third.stdout
