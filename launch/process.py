"""Runs one torchrun agent as a child process: streams its output, forwards signals, returns its exit code.

torchrun owns the ranks. The launcher never joins a process group itself, so a sweep can start one torchrun
job after another from the same process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import BinaryIO

from data.credentials import redact


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (torchrun's worker ranks), read from /proc."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children += [int(c) for c in task.read_text().split()]
        except OSError:  # the thread ended while we read
            continue
    return children


def signal_ranks(proc: subprocess.Popen, signum: int) -> None:
    """Sends `signum` to torchrun's workers, not to torchrun: its agent would treat it as a failure."""
    for pid in child_pids(proc.pid):
        with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
            os.kill(pid, signum)


def start(cmd: Sequence[str], env: Mapping[str, str], preempt: int) -> subprocess.Popen:
    """Starts torchrun with the pre-emption signal ignored in the agent.

    SLURM signals every process of the job step. An ignored signal stays ignored across exec, so the agent
    survives it while the trainer, which installs its own handler, checkpoints.
    """

    def ignore_preempt() -> None:
        signal.signal(preempt, signal.SIG_IGN)
        _terminate_with_parent()

    return subprocess.Popen(
        list(cmd),
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=ignore_preempt,
    )


PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM when the launcher dies, however it dies (even SIGKILL), so torchrun
    stops its ranks (they checkpoint) instead of training on unsupervised. Linux only; elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def drain(proc: subprocess.Popen, timeout_s: float) -> int | None:
    """Waits up to timeout_s for torchrun to exit; its code, or None if it is still running."""
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None


Handler = Callable[[int, FrameType | None], object] | int | None


class LaunchStopped(BaseException):
    """SIGTERM reached the launcher: torchrun has stopped its ranks; the launch (a whole sweep) stops too.

    A BaseException, as KeyboardInterrupt is, so Hydra does not record it as one failed trial and go on."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _copy_output(proc: subprocess.Popen, log: BinaryIO | None) -> None:
    """Torchrun's output, line by line with credentials redacted, to our stdout and to the launch log."""
    assert proc.stdout is not None
    for raw in iter(proc.stdout.readline, b""):
        line = redact(raw.decode(errors="surrogateescape")).encode(errors="surrogateescape")
        sys.stdout.buffer.write(line)
        sys.stdout.flush()
        if log is not None:
            log.write(line)
            log.flush()


def run_torchrun(
    cmd: Sequence[str],
    env: Mapping[str, str],
    log_path: Path | None,
    preempt_signal: str = "USR1",
    on_preempt: Callable[[subprocess.Popen], None] | None = None,
    forward_stop: bool = True,
) -> int:
    """Runs torchrun to completion, copying its merged stdout/stderr to ours and to `log_path`.

    SIGTERM and SIGINT reach torchrun, which stops its ranks (SIGINT then stops the launch too);
    the pre-emption signal reaches the ranks, then `on_preempt(proc)` runs (the SLURM job uses it to requeue
    once torchrun has exited). forward_stop=False: SIGTERM reached torchrun already (SLURM signals every
    process of a job step) and a second one would cut its shutdown short; we only wait for it.
    """
    preempt = getattr(signal, f"SIG{preempt_signal}")
    proc = start(cmd, env, preempt)

    stopped_by: list[int] = []

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stopped_by.append(signum)
        if forward_stop:
            proc.send_signal(signum)

    def forward_preempt(signum: int, frame: FrameType | None) -> None:
        print(f"[launch] SIG{preempt_signal}: asking the ranks to checkpoint", file=sys.stderr, flush=True)
        signal_ranks(proc, preempt)
        if on_preempt is not None:
            on_preempt(proc)

    previous: dict[int, Handler] = {}
    for signum, handler in ((signal.SIGTERM, on_stop), (preempt, forward_preempt)):
        previous[signum] = signal.signal(signum, handler)
    log = log_path.open("ab") if log_path is not None else None
    try:
        _copy_output(proc, log)
        rc = proc.wait()
        if stopped_by:
            raise LaunchStopped(stopped_by[0])
        return rc
    except KeyboardInterrupt:
        # From a terminal torchrun got the same SIGINT and stops its ranks; if it did not (a signal sent to
        # us alone), SIGTERM asks it to. Then the whole launch stops: a sweep must not start its next trial.
        if drain(proc, 5) is None:
            proc.terminate()
            if drain(proc, 60) is None:
                proc.kill()
                proc.wait()
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if log is not None:
            log.close()
