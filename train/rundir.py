"""The run directory belongs to one run at a time: a lock while a job writes, and no mixing with another run.

- `hold_run_dir`: rank 0 takes an exclusive `flock` on `<run.dir>/.lock` for the whole job and records the
  holder (pid, host, start, command) in it. A second job into the same directory stops at once naming the
  holder. The kernel drops the lock when its process dies, however it dies, so a lock left by a killed job
  is recovered by the next one without any clean-up.
- `choose_resume`: what the job resumes from, checked before anything in the run directory is written:
  checksums, same model, and that a fresh start (or a resume from an older step) would not mix with
  checkpoints or metrics of another run there. `run.overwrite=true` moves those aside to
  `<run.dir>/replaced/<UTC time>/`: nothing is deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TypeVar

import errors
from conf import ConfigError, RunConfig
from train.checkpoint import (
    STEP_DIR,
    check_same_model,
    checkpoint_step,
    complete_checkpoints,
    resolve_resume,
    step_dirs,
)
from train.config import RunInfo
from train.export import EXPORT_FILES
from train.parallel import DistInfo, from_rank0

LOCK_FILE = ".lock"
REPLACED_DIR = "replaced"
OUTPUTS = ("metrics.jsonl", "model.safetensors", "model_config.json")
"""Files of a started or finished run that a fresh run would overwrite. config.yaml alone (a job that stopped
before its first step) is no work to lose; it moves aside with the rest under run.overwrite=true, and so do
the export's tokenizer files and checksum listing (train.export.EXPORT_FILES)."""
NESTED_DEPTH = 4
"""How deep below a new run dir other runs are looked for (runs/<name>/checkpoints/step_X is 3 deep)."""
OWN_SUBDIRS = ("checkpoints", "replaced", "wandb")
"""A run dir's own subdirectories: what is below them is its own output, not another run."""

T = TypeVar("T")


class RunDirError(errors.RunDirRefused, RuntimeError):
    """The run directory is in use by another job, or holds another run's output."""


def check_run_name(name: str) -> None:
    """run.name names a directory under runs/: '..' or an absolute path would write elsewhere."""
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ConfigError(
            f"run.name={name!r} must be a relative name without '..' components: it names a directory "
            "under runs/ (set run.dir to write somewhere else)"
        )


def _is_run_dir(path: Path) -> bool:
    """A dir some run has used: a checkpoints/ dir, metrics, launch.json, or our lock (other tools name a
    file .lock too, pytest's numbered dirs among them: only a lock naming a holder as ours does counts)."""
    if any((path / name).exists() for name in ("checkpoints", "metrics.jsonl", "launch.json")):
        return True
    try:
        return "command" in json.loads((path / LOCK_FILE).read_text())
    except (OSError, ValueError, TypeError):
        return False


def _is_checkpoint(path: Path) -> bool:
    return (path / ".metadata").is_file()


def _run_below(run_dir: Path) -> Path | None:
    """The first other run dir or checkpoint below run_dir (its own subdirs and hidden ones skipped)."""
    for top, dirs, _ in os.walk(run_dir):
        here = Path(top)
        depth = len(here.relative_to(run_dir).parts)
        dirs[:] = [] if depth >= NESTED_DEPTH else [d for d in sorted(dirs) if not d.startswith(".")]
        if depth == 0:
            dirs[:] = [d for d in dirs if d not in OWN_SUBDIRS]
        elif _is_run_dir(here) or _is_checkpoint(here):
            return here
    return None


def check_run_dir_placement(run_dir: Path) -> None:
    """Refuses a run dir that is a checkpoint, lies inside another run's dir or a checkpoint, or holds another
    run's dir or a checkpoint below it: its config.yaml, metrics or checkpoints would overwrite or mix with
    that run's (which could then no longer resume). Checked before anything is written."""
    here = run_dir.resolve()
    if _is_checkpoint(here):
        raise RunDirError(f"run.dir={run_dir} is a checkpoint directory; choose a run dir outside it")
    for parent in here.parents:
        if _is_run_dir(parent) or _is_checkpoint(parent):
            what = "a checkpoint" if _is_checkpoint(parent) else "another run's dir"
            raise RunDirError(
                f"run.dir={run_dir} lies inside {parent}, {what}: writing there would change that run's "
                "output. Choose a run dir outside it (e.g. another run.name)"
            )
    below = _run_below(here) if here.is_dir() else None
    if below is not None:
        what = "a checkpoint" if _is_checkpoint(below) else "another run's dir"
        raise RunDirError(
            f"run.dir={run_dir} lies above {below}, {what}: this run's output would mix with it. Choose a "
            "run dir that holds no other run (e.g. another run.name)"
        )


def rank0_decides(fn: Callable[[], T], info: DistInfo) -> T:
    """fn() on rank 0, its result (or the exception it raised) on every rank, so no rank waits forever."""
    outcome: tuple[bool, object] | None = None
    if info.is_main:
        try:
            outcome = (True, fn())
        except Exception as err:  # noqa: BLE001 - re-raised on every rank below
            outcome = (False, err)
    ok, value = from_rank0(outcome, info)
    if not ok:
        raise value
    return value


class RunDirLock:
    """An exclusive flock on `<run_dir>/.lock`, held from acquire() to release()."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self.file: IO[str] | None = None
        self.made: list[Path] = []
        """The lock file and the dirs acquire() created: a job that writes nothing else removes them."""

    def acquire(self) -> None:
        missing = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            file = self.path.open("a+")
        except OSError as err:
            refused = errors.StorageError.from_os_error(err, self.path.parent, "creating the run dir's lock")
            if refused is None:
                raise
            raise refused from None
        self.made = ([self.path] if created else []) + missing
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = _describe_holder(file.read())
            file.close()
            raise RunDirError(
                f"run dir {self.path.parent} is in use by another job: {holder}. Wait for it to end, stop "
                "it, or choose another run.name"
            ) from None
        # A lock left by a dead job was dropped by the kernel when it died; its stale holder line is replaced.
        file.seek(0)
        file.truncate()
        file.write(self.describe_holder() + "\n")
        file.flush()
        self.file = file

    @staticmethod
    def describe_holder() -> str:
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        command = " ".join(sys.argv)
        return json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "since": started, "command": command}
        )

    def release(self) -> None:
        """Drops the lock. A job refused before it started (no config.yaml yet: every check runs before it is
        written) removes the lock file it created, and the dirs it created if they are empty again."""
        if self.file is None:
            return
        if self.made and not (self.path.parent / "config.yaml").exists():
            for path in self.made:  # the lock file first, then the dirs it needed, innermost first
                with contextlib.suppress(OSError):
                    path.unlink() if path == self.path else path.rmdir()
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()
        self.file = None


def _describe_holder(text: str) -> str:
    """The lock file's holder line as a sentence; what is there if it cannot be read as one."""
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on host {h['host']} since {h['since']} ({h['command']})"
    except (ValueError, KeyError, TypeError):
        return text.strip() or "a process that has not written its name yet"


@contextlib.contextmanager
def hold_run_dir(run: RunInfo, info: DistInfo) -> Iterator[None]:
    """Checks run.name, then holds the run dir's lock (rank 0) for the block; every rank learns a refusal."""
    check_run_name(run.name)
    rank0_decides(lambda: check_run_dir_placement(Path(run.dir)), info)
    lock = RunDirLock(Path(run.dir))
    rank0_decides(lock.acquire, info)
    try:
        yield
    finally:
        lock.release()


def _restarted_by_torchrun() -> bool:
    """A torchrun restart of this same job: its earlier attempt's files are this run's, not another's."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def _metrics_rows(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0


def _foreign_output(run_dir: Path, start_step: int) -> list[Path]:
    """What a run starting at start_step in run_dir would mix with: newer complete checkpoints; on a fresh
    start also incomplete ones, metrics rows and an export."""
    root = run_dir / "checkpoints"
    if start_step > 0:
        return [p for p in complete_checkpoints(root) if checkpoint_step(p) > start_step]
    found = step_dirs(root)
    for name in OUTPUTS:
        path = run_dir / name
        if path.is_file() and (name != "metrics.jsonl" or _metrics_rows(path)):
            found.append(path)
    return found


def _describe(paths: list[Path], run_dir: Path) -> str:
    names = []
    for path in paths:
        label = str(path.relative_to(run_dir))
        if path.is_dir() and not (path / ".metadata").is_file():
            label += " (incomplete: no .metadata)"
        names.append(label)
    return ", ".join(names)


def _move_aside(paths: list[Path], run_dir: Path) -> Path:
    target = run_dir / REPLACED_DIR / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for path in paths:
        dest = target / path.relative_to(run_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        path.rename(dest)
    return target


def choose_resume(cfg: RunConfig, config_yaml: str) -> Path | None:
    """The checkpoint this job resumes from (None: a fresh start), after every check; rank 0 only.

    Nothing in the run dir is written before these checks pass, config.yaml included."""
    run_dir = Path(cfg.run.dir)
    ckpt = cfg.checkpoint
    resume = resolve_resume(ckpt.resume, run_dir / "checkpoints", ckpt.verify, ckpt.fallback)
    start_step = 0
    if resume is not None:
        check_same_model(resume, config_yaml)
        start_step = _saved_step(resume)
    if _restarted_by_torchrun():
        return resume
    foreign = _foreign_output(run_dir, start_step)
    if foreign and not cfg.run.overwrite:
        what = "a fresh start" if start_step == 0 else f"resuming from step {start_step}"
        raise RunDirError(
            f"run dir {run_dir} holds another run's output: {_describe(foreign, run_dir)}; {what} "
            f"(checkpoint.resume={ckpt.resume}) would mix with it, and keep_last or the next resume would "
            "pick the wrong checkpoints. Resume it with checkpoint.resume=auto, choose another run.name, "
            f"or pass run.overwrite=true to move it aside to {run_dir / REPLACED_DIR}/<time>/ (nothing is "
            "deleted)"
        )
    if foreign:
        described = _describe(foreign, run_dir)
        if start_step == 0:
            companions = [run_dir / name for name in ("config.yaml", *EXPORT_FILES)]
            foreign += [path for path in companions if path.is_file() and path not in foreign]
        moved_to = _move_aside(foreign, run_dir)
        print(f"run.overwrite: moved {described} of an earlier run to {moved_to}", flush=True)
    return resume


def _saved_step(checkpoint: Path) -> int:
    """The step in a checkpoint's dir name; 0 for an explicit path named otherwise (treated as a fresh start
    for the run dir checks: its own output then counts as another run's)."""
    return checkpoint_step(checkpoint) if STEP_DIR.match(checkpoint.name) else 0
