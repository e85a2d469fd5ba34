"""DCP checkpoints that appear only when complete, the last K kept, optionally written in the background.

Layout: `<run.dir>/checkpoints/step_XXXXXXXX/` holds DCP's shard files, its `.metadata` (written last) and
the resolved `config.yaml`. A save goes to `.tmp_step_XXXXXXXX/` and is renamed once every rank has
written: a crash mid-save leaves only a tmp dir, which resume ignores and the next save removes.
"""

from __future__ import annotations

import re
import shutil
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from train.config import CheckpointConfig
from train.parallel import DistInfo
from train.state import TrainState

STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def is_complete(path: Path) -> bool:
    """A published checkpoint: the step_ name and DCP's metadata file, which DCP writes after all shards."""
    return STEP_DIR.match(path.name) is not None and (path / ".metadata").is_file()


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def resolve_resume(resume: str, root: Path) -> Path | None:
    """checkpoint.resume -> the checkpoint to load: auto (latest complete, or none yet), none, or a path."""
    if resume == "none":
        return None
    if resume == "auto":
        done = complete_checkpoints(root)
        return done[-1] if done else None
    path = Path(resume)
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(
            f"checkpoint.resume={resume!r} is not a complete DCP checkpoint (no .metadata)"
        )
    return path


def _clone_cpu_tensors(obj: Any) -> Any:
    """The state dict with its CPU tensors copied, so training may go on while a background thread writes.

    Device tensors are left to DCP's staging, which copies them to host memory before async_save returns;
    cloning them here would double the model and optimizer state in GPU memory for nothing. A CPU tensor
    might be handed to the writer thread as it is, so it is copied here (torch 2.13's stager copies it
    again: about 0.5 s per save for a 125m model on CPU, see bench.checkpoint)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone() if obj.device.type == "cpu" else obj
    if isinstance(obj, dict):
        return {k: _clone_cpu_tensors(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone_cpu_tensors(v) for v in obj]
    return obj


class Checkpointer:
    def __init__(self, cfg: CheckpointConfig, root: Path, info: DistInfo) -> None:
        self.cfg, self.root, self.info = cfg, root, info
        # Async writes use their own gloo group: on the default group their collectives would interleave
        # with FSDP's and deadlock.
        self.group = dist.new_group(backend="gloo") if cfg.async_save and cfg.enabled else None
        self.pending: tuple[Future, Path, Path, str] | None = None
        self.last_saved: int | None = None
        """The step of the latest save started (or loaded), so the end of a run does not save it twice."""

    def save_if_due(self, state: TrainState, step: int, config_yaml: str, max_steps: int) -> None:
        """The interval save: every checkpoint.interval steps (in the background with async_save), except at
        max_steps, which save_final writes blocking. Also publishes a background save that has finished."""
        if self.cfg.interval and step % self.cfg.interval == 0 and step < max_steps:
            self.save(state, step, config_yaml)
        self.poll()

    def save_final(self, state: TrainState, step: int, config_yaml: str) -> None:
        """The end of a run: saves `step` unless it is saved already, and waits for every background save."""
        if self.last_saved != step:
            self.save(state, step, config_yaml, block=True)
        self.wait()

    def save(self, state: TrainState, step: int, config_yaml: str, block: bool = False) -> None:
        """Writes step_<step>; with async_save returns once the state is copied, and publishes later.
        With checkpoint.enabled=false it writes nothing."""
        if not self.cfg.enabled:
            return
        self.wait()
        self.last_saved = step
        tmp = self.root / f".tmp_{step_dir_name(step)}"
        final = self.root / step_dir_name(step)
        if self.info.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(".tmp_step_*"):
                shutil.rmtree(stale, ignore_errors=True)
        dist.barrier()
        if self.cfg.async_save and not block:
            staged = {"app": _clone_cpu_tensors(state.state_dict())}
            future = dcp.async_save(staged, checkpoint_id=str(tmp), process_group=self.group)
            self.pending = (future, tmp, final, config_yaml)
            return
        dcp.save({"app": state}, checkpoint_id=str(tmp))
        self._publish(tmp, final, config_yaml)
        dist.barrier()

    def poll(self) -> None:
        """Publishes a finished background save without waiting (no collectives: safe any time)."""
        if self.pending is not None and self.pending[0].done():
            self.wait()

    def wait(self) -> None:
        """Blocks until a background save is written, then publishes it."""
        if self.pending is None:
            return
        future, tmp, final, config_yaml = self.pending
        self.pending = None
        future.result()
        # The coordinator (rank 0) finishes only after every rank's shards are written.
        self._publish(tmp, final, config_yaml)

    def _publish(self, tmp: Path, final: Path, config_yaml: str) -> None:
        if not self.info.is_main:
            return
        (tmp / "config.yaml").write_text(config_yaml)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)  # atomic on POSIX: the checkpoint is visible whole or not at all
        for old in complete_checkpoints(self.root)[: -self.cfg.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def load(self, state: TrainState, path: Path) -> None:
        dcp.load({"app": state}, checkpoint_id=str(path))
        self.last_saved = state.counters.step
