"""`python -m launch` killed by SIGKILL: its torchrun is told (SIGTERM, set as its parent-death signal), and
the ranks checkpoint and exit instead of training on unsupervised. Real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.process import child_pids

pytestmark = pytest.mark.slow


def test_killing_the_launcher_stops_torchrun_and_its_ranks_after_a_checkpoint(tmp_path: Path, data_env, tiny):
    run_dir = tmp_path / "run"
    overrides = [o for o in tiny if not o.startswith("trainer.max_steps")]
    cmd = [sys.executable, "-m", "launch", *overrides, "trainer.max_steps=100000", "parallel=ddp"]
    cmd += ["launch.nproc_per_node=2", f"run.dir={run_dir}"]
    launcher = subprocess.Popen(
        cmd, cwd=tmp_path, env=data_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    torchrun, deadline = None, time.monotonic() + 120
    try:
        log = run_dir / "metrics.jsonl"
        while not (log.exists() and len(log.read_text().splitlines()) >= 3):
            assert time.monotonic() < deadline and launcher.poll() is None, "the job logged no steps"
            time.sleep(0.2)
        [torchrun] = child_pids(launcher.pid)
        launcher.kill()
        launcher.wait()
        launcher.stdout.close()  # its reader is gone: the ranks' output pipe is broken from now on
        deadline = time.monotonic() + 90
        while Path(f"/proc/{torchrun}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not Path(f"/proc/{torchrun}").exists(), "torchrun outlived its launcher"
    finally:
        if torchrun is not None and Path(f"/proc/{torchrun}").exists():
            subprocess.run(["kill", "-9", str(torchrun)], check=False)
    last = max(row["step"] for row in map(json.loads, log.read_text().splitlines()))
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [f"step_{last:08d}"]
