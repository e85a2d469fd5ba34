"""SIGTERM / SIGUSR1 (SLURM pre-emption, torchrun shutdown) ask the loop to checkpoint and exit cleanly; so
does the death of the torchrun agent that started this worker, whatever killed it.

The handler only sets a flag; the loop agrees on it across ranks after a step (one tiny all-reduce), so every
rank saves the same step and no rank is left waiting in a collective.

A worker outliving its launcher would train on unsupervised (SIGKILL, or SIGUSR1's default action, takes
torchrun down without a word to its workers, which run in their own process groups). Under torchrun a
watcher thread compares the parent pid with the one at start, once a second: when the agent dies the worker
is re-parented, and the watcher sets the same flag a signal would. A plain `python -m train` is not watched:
its parent is a shell, which may exit (nohup) without meaning stop.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
PARENT_POLL_S = 1.0
LAUNCHER_DIED = "launcher death"
"""signal_name when the torchrun agent that started this worker is gone."""


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


class StopRequest:
    def __init__(self, watch_parent: bool | None = None) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        self._watch_parent = under_torchrun() if watch_parent is None else watch_parent
        self._stop_watching = threading.Event()
        self._watcher: threading.Thread | None = None

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        if self._watch_parent:
            _survive_closed_output()
            self._stop_watching.clear()
            self._watcher = threading.Thread(
                target=self._watch, args=(os.getppid(),), name="launcher-watch", daemon=True
            )
            self._watcher.start()

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self._watcher is not None:
            self._stop_watching.set()
            self._watcher.join()
            self._watcher = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name

    def _watch(self, parent: int) -> None:
        while not self._stop_watching.wait(PARENT_POLL_S):
            if os.getppid() != parent:
                self.signal_name = self.signal_name or LAUNCHER_DIED
                print(
                    f"[pid {os.getpid()}] the launcher (pid {parent}) is gone: checkpointing and stopping",
                    flush=True,
                )
                return

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


class _OutputThatSurvivesItsReader(io.TextIOBase):
    """A text stream that turns into /dev/null once its reader is gone (EPIPE), instead of raising.

    A worker's stdout is its launcher's pipe: when the launcher dies, the next progress line would raise
    BrokenPipeError in the loop and lose the checkpoint the stop is meant to write."""

    def __init__(self, inner: io.TextIOBase) -> None:
        self.inner = inner

    def write(self, text: str) -> int:
        try:
            return self.inner.write(text)
        except (BrokenPipeError, ValueError):  # ValueError: the stream was closed meanwhile
            self.inner = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
            return len(text)

    def flush(self) -> None:
        try:
            self.inner.flush()
        except (BrokenPipeError, ValueError):
            self.inner = open(os.devnull, "w")  # noqa: SIM115

    def fileno(self) -> int:
        return self.inner.fileno()

    def isatty(self) -> bool:
        return self.inner.isatty()


def _survive_closed_output() -> None:
    if not isinstance(sys.stdout, _OutputThatSurvivesItsReader):
        sys.stdout = _OutputThatSurvivesItsReader(sys.stdout)
    if not isinstance(sys.stderr, _OutputThatSurvivesItsReader):
        sys.stderr = _OutputThatSurvivesItsReader(sys.stderr)
