"""A diverging loss and a pre-emption signal: each ends the way its contract says (bad config:
test_config_errors.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("data_root")]


def test_nan_loss_stops_without_checkpointing(tmp_path, jobs):
    run_dir = tmp_path / "nan"
    proc = jobs.train(
        run_dir, "debug.fault=nan_loss", "debug.fault_step=5", "checkpoint.interval=2", check=False
    )
    assert proc.returncode == 3
    assert "loss is nan at step 5" in proc.stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    assert not (run_dir / "model.safetensors").exists()
    last = jobs.metrics(run_dir)[-1]
    assert last["event"] == "diverged" and last["step"] == 5


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_preemption_signal_saves_a_checkpoint_and_exits_cleanly(tmp_path, jobs, sig):
    run_dir = tmp_path / "preempted"
    cmd = jobs.command(
        run_dir, "trainer.max_steps=100000", "checkpoint.interval=0", "trainer.eval_interval=0"
    )
    proc = subprocess.Popen(cmd, cwd=jobs.repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            log = run_dir / "metrics.jsonl"
            if log.exists() and len(log.read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert f"stopped by {sig.name}" in stdout
    last_step = max(
        row["step"] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    )
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [f"step_{last_step:08d}"]
    assert 3 <= last_step < 100000
