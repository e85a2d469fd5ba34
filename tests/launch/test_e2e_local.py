"""End to end on this machine: real torchrun jobs started by `python -m launch`, one node or two agents."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train.metrics import read_metrics

pytestmark = pytest.mark.slow


def world_size(run_dir: Path) -> float:
    """Ranks that trained, from the trainer's own figures: job tokens/s over per-rank tokens/s."""
    row = next(r for r in read_metrics(run_dir / "metrics.jsonl") if "tokens_per_s_per_device" in r)
    return round(row["tokens_per_s"] / row["tokens_per_s_per_device"])


def end_event(run_dir: Path) -> dict:
    return next(r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("event") == "end")


def test_local_two_rank_launch_trains_and_exits_zero(data_env, tmp_path: Path, tiny, run_launch) -> None:
    run_dir = tmp_path / "runs" / "two_ranks"
    proc = run_launch(
        [*tiny, "parallel=ddp", "launch.nproc_per_node=2", f"run.dir={run_dir}"], data_env, tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert end_event(run_dir)["step"] == 4
    assert world_size(run_dir) == 2
    status = json.loads((run_dir / "launch.json").read_text())
    assert status["exit_code"] == 0 and "--nproc-per-node=2" in status["command"]
    assert "launch.nproc_per_node=2" not in status["overrides"]  # launch.* never reaches the trainer
    assert "torchrun exited with code 0" in proc.stdout


def test_failing_trials_exit_codes_come_back(data_env, tmp_path: Path, tiny, run_launch, table_rows) -> None:
    sweep_dir = tmp_path / "sweeps" / "crash"
    args = [
        "--multirun",
        *tiny,
        "debug.fault=crash",
        "debug.fault_step=1,2",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    proc = run_launch(args, data_env, tmp_path)
    trials = sorted(d for d in sweep_dir.iterdir() if d.is_dir())
    assert [d.name for d in trials] == ["0-fault_step-1", "1-fault_step-2"]
    codes = {d.name: json.loads((d / "launch.json").read_text())["exit_code"] for d in trials}
    # Both crashed: the sweep went on after the first failure, and each code is recorded and tabulated.
    assert all(code not in (0, None) for code in codes.values()), codes
    assert {name: cells[-1] for name, cells in table_rows(proc.stdout).items()} == {
        name: str(code) for name, code in codes.items()
    }
    assert proc.returncode == codes["0-fault_step-1"], proc.stdout[-3000:] + proc.stderr[-3000:]


def test_two_agents_on_loopback_form_one_two_node_job(data_env, tmp_path: Path, tiny, free_port) -> None:
    run_dir = tmp_path / "runs" / "two_nodes"
    common = [
        *tiny,
        "parallel=ddp",
        "launch=multinode",
        "launch.nnodes=2",
        "launch.nproc_per_node=1",
        f"launch.rdzv_endpoint=127.0.0.1:{free_port}",
        "launch.local_addr=127.0.0.1",
        f"run.dir={run_dir}",
    ]
    agents = [
        subprocess.Popen(
            [sys.executable, "-m", "launch", *common, f"launch.node_rank={rank}"],
            cwd=tmp_path,
            env=data_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [agent.communicate(timeout=240)[0] for agent in agents]
    assert [a.returncode for a in agents] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert world_size(run_dir) == 2
    assert end_event(run_dir)["step"] == 4
    assert "--nnodes=2" in json.loads((run_dir / "launch.json").read_text())["command"]
    assert (run_dir / "launch_node0.log").exists() and (run_dir / "launch_node1.log").exists()


def _sigint_as_a_terminal_has_it() -> None:
    """A job a terminal starts gets SIGINT at its default; pytest's may not (a shell ignores SIGINT for its
    background jobs, `cmd &`, and the ignored disposition is inherited through exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_stopping_the_launcher_stops_the_sweep(data_env, tmp_path: Path, tiny, how: str) -> None:
    """Ctrl-C (SIGINT to the terminal's process group) or SIGTERM to the launcher alone: the running trial's
    torchrun stops, no further trial starts, and the launcher exits 128 + the signal."""
    sweep_dir = tmp_path / "sweep"
    args = [*tiny, "trainer.max_steps=2000", "attention=baseline,diff_v2", f"hydra.sweep.dir={sweep_dir}"]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "launch", "--multirun", *args],
        cwd=tmp_path,
        env=data_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a shell job has
        preexec_fn=_sigint_as_a_terminal_has_it,
    )
    metrics = sweep_dir / "0-attention-baseline" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while len(read_metrics(metrics)) < 3:
        assert time.monotonic() < deadline and launcher.poll() is None, "the first trial never trained"
        time.sleep(0.2)
    if how == "ctrl-c":
        os.killpg(launcher.pid, signal.SIGINT)
        expected = signal.SIGINT
    else:
        launcher.terminate()
        expected = signal.SIGTERM
    # The stop is bounded (torchrun's own grace for its ranks, then the launcher's 5 s + 60 s ladder to
    # SIGKILL), but a loaded 2-core machine stretches every step of it.
    output = launcher.communicate(timeout=240)[0]
    assert launcher.returncode == 128 + expected, output[-3000:]
    assert not (sweep_dir / "1-attention-diff_v2").exists()
    status = json.loads((sweep_dir / "0-attention-baseline" / "launch.json").read_text())
    assert status["stopped_by"] == expected.name
    assert not any(r.get("event") == "end" for r in read_metrics(metrics))  # stopped before its last step
