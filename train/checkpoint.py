"""DCP checkpoints that appear only when complete, the last K kept, optionally written in the background.

Layout: `<run.dir>/checkpoints/step_XXXXXXXX/` holds DCP's shard files, its `.metadata` (written last),
the resolved `config.yaml` and `checksums.json` (sha256 of the others). A save goes to `.tmp_step_XXXXXXXX/`
and is renamed once every rank has written: a crash mid-save leaves only a tmp dir, which resume ignores and
the next save removes. Loading verifies the checksums and never unpickles anything but DCP metadata and plain
data (train.safe_load).

A save the disk refuses (full, over quota, read-only) stops the run with errors.StorageError naming the path
and the cause; its tmp dir is removed and the previous checkpoints are left as they were. With async_save,
rank 0 hashes and publishes on a publisher thread, so the loop never waits for the checksums.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from omegaconf import OmegaConf
from torch.distributed.checkpoint.api import CheckpointException

import errors
from train.checksums import ChecksumError, verify_checksums, write_checksums
from train.config import CheckpointConfig
from train.parallel import DistInfo
from train.safe_load import SafeFileSystemReader, SafeLoadPlanner, UnsafeCheckpointError
from train.state import TrainState

STEP_DIR = re.compile(r"^step_(\d{8})$")
CORRUPT_SUFFIX = ".corrupt"
"""checkpoint.fallback=true renames a corrupt checkpoint step_XXXXXXXX.corrupt: kept, never loaded."""
RUNTIME_MODEL_FIELDS = ("attn_impl", "loss_chunk_tokens")
"""Model fields a resume may change: the kernel (or the loss's chunking) computes the same function."""


class CheckpointError(errors.CheckpointRefused, RuntimeError):
    """A checkpoint that must not be loaded: corrupt, unsafe, incomplete, or of another model."""


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def is_complete(path: Path) -> bool:
    """A published checkpoint: the step_ name and DCP's metadata file, which DCP writes after all shards."""
    return STEP_DIR.match(path.name) is not None and (path / ".metadata").is_file()


def checkpoint_step(path: Path) -> int:
    return int(STEP_DIR.match(path.name).group(1))


def step_dirs(root: Path) -> list[Path]:
    """Every step_XXXXXXXX dir under root, complete or not, oldest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)), key=checkpoint_step)


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    return [p for p in step_dirs(root) if is_complete(p)]


def _verified(path: Path, verify: bool) -> Path:
    if verify:
        try:
            verify_checksums(path)
        except ChecksumError as err:
            raise CheckpointError(str(err)) from err
    return path


def resolve_resume(resume: str, root: Path, verify: bool = True, fallback: bool = False) -> Path | None:
    """checkpoint.resume -> the checkpoint to load: auto (latest complete, or none yet), none, or a path.

    With verify, the checkpoint's checksums are checked first. A corrupt latest checkpoint stops the run
    (CheckpointError naming the file) unless fallback: then it is renamed step_X.corrupt, kept, and the
    previous complete one is tried (auto only: an explicit path is used as given or not at all)."""
    if resume == "none":
        return None
    if resume != "auto":
        path = Path(resume)
        if not (path / ".metadata").is_file():
            raise CheckpointError(
                f"{path} is not a complete DCP checkpoint (no .metadata; checkpoint.resume={resume!r})"
            )
        return _verified(path, verify)
    for path in reversed(complete_checkpoints(root)):
        try:
            return _verified(path, verify)
        except CheckpointError as err:
            if not fallback:
                raise CheckpointError(
                    f"{err}. The latest checkpoint {path} is corrupt; checkpoint.fallback=true resumes from "
                    "the previous complete checkpoint instead (the corrupt one is kept, renamed "
                    f"{path.name}{CORRUPT_SUFFIX})"
                ) from err
            print(f"checkpoint.fallback: skipping corrupt {path}: {err}", flush=True)
            path.rename(path.with_name(path.name + CORRUPT_SUFFIX))
    return None


def check_same_model(checkpoint: Path, config_yaml: str) -> None:
    """Refuses to resume a checkpoint written for another model: shapes may match while the maths differ
    (e.g. diff_v2 vs diff_v2_no_lambda). Compares the model section of the checkpoint's config.yaml with the
    requested run's resolved config (both as composed, before training fills in e.g. model.eot_token)."""
    saved_path = checkpoint / "config.yaml"
    if not saved_path.is_file():
        raise CheckpointError(f"{saved_path} is missing: cannot tell which model {checkpoint} holds")
    saved = OmegaConf.to_container(
        OmegaConf.load(saved_path).get("model", {}), resolve=True, enum_to_str=True
    )
    wanted = OmegaConf.to_container(OmegaConf.create(config_yaml).model, resolve=True, enum_to_str=True)
    differ = [
        f"model.{key}: checkpoint {saved.get(key)!r}, requested {value!r}"
        for key, value in wanted.items()
        if key not in RUNTIME_MODEL_FIELDS and saved.get(key) != value
    ]
    if differ:
        raise CheckpointError(
            f"{checkpoint} holds another model than the one requested ({'; '.join(differ)}). Resume with the "
            "checkpoint's model settings, or start a new run (another run.name, or checkpoint.resume=none)"
        )


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
    def __init__(self, cfg: CheckpointConfig, root: Path, info: DistInfo, config_yaml: str) -> None:
        """config_yaml: the run's resolved config, written once into every checkpoint as config.yaml."""
        self.cfg, self.root, self.info, self.config_yaml = cfg, root, info, config_yaml
        # Async writes use their own gloo group: on the default group their collectives would interleave
        # with FSDP's and deadlock.
        self.group = dist.new_group(backend="gloo") if cfg.async_save and cfg.enabled else None
        self.pending: tuple[Future, Path] | None = None
        """A background save: its future (on rank 0, the publisher's: written, hashed and renamed) and its
        tmp dir."""
        self.publisher = ThreadPoolExecutor(1, thread_name_prefix="ckpt-publish") if self.group else None
        self.last_saved: int | None = None
        """The step of the latest save started (or loaded), so the end of a run does not save it twice."""

    def save_if_due(self, state: TrainState, step: int, max_steps: int) -> None:
        """The interval save: every checkpoint.interval steps (in the background with async_save), except at
        max_steps, which save_final writes blocking. Also publishes a background save that has finished."""
        if self.cfg.interval and step % self.cfg.interval == 0 and step < max_steps:
            self.save(state, step)
        self.poll()

    def save_final(self, state: TrainState, step: int) -> None:
        """The end of a run: saves `step` unless it is saved already, and waits for every background save."""
        if self.last_saved != step:
            self.save(state, step, block=True)
        self.wait()

    def save(self, state: TrainState, step: int, block: bool = False) -> None:
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
            try:
                future = dcp.async_save(staged, checkpoint_id=str(tmp), process_group=self.group)
            except (Exception, CheckpointException) as err:  # DCP's is a BaseException
                self._refuse(err, tmp)
            if self.publisher is not None and self.info.is_main:
                # The coordinator (rank 0) finishes only after every rank's shards are written.
                future = self.publisher.submit(self._publish_when_written, future, tmp, final)
            self.pending = (future, tmp)
            return
        try:
            dcp.save({"app": state}, checkpoint_id=str(tmp))
            self._publish(tmp, final)
        except (Exception, CheckpointException) as err:  # DCP's is a BaseException
            self._refuse(err, tmp)
        dist.barrier()

    def poll(self) -> None:
        """Publishes a finished background save without waiting (no collectives: safe any time)."""
        if self.pending is not None and self.pending[0].done():
            self.wait()

    def wait(self) -> None:
        """Blocks until a background save is written, then publishes it."""
        if self.pending is None:
            return
        future, tmp = self.pending
        self.pending = None
        try:
            future.result()
        except (Exception, CheckpointException) as err:  # DCP's is a BaseException
            self._refuse(err, tmp)

    def _publish_when_written(self, written: Future, tmp: Path, final: Path) -> None:
        written.result()
        self._publish(tmp, final)

    def _refuse(self, err: BaseException, tmp: Path) -> None:
        """Removes the partial tmp dir, then re-raises err: as a StorageError when the disk refused the
        write (DCP may report it as another error: torch's zip writer says "unexpected pos"; then a probe
        write tells)."""
        refused = _storage_error(err, tmp) or _probe_storage(self.root, tmp, self.info.rank)
        if self.info.is_main:  # after the probe: removing it frees the space the probe would miss
            shutil.rmtree(tmp, ignore_errors=True)
        if refused is not None:
            raise refused from None
        raise err

    def _publish(self, tmp: Path, final: Path) -> None:
        if not self.info.is_main:
            return
        (tmp / "config.yaml").write_text(self.config_yaml)
        write_checksums(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)  # atomic on POSIX: the checkpoint is visible whole or not at all
        # keep_last counts back from the step just written: a newer checkpoint is never this run's to delete.
        written = checkpoint_step(final)
        older = [p for p in complete_checkpoints(self.root) if checkpoint_step(p) <= written]
        for old in older[: -self.cfg.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def load(self, state: TrainState, path: Path) -> None:
        load_safely({"app": state}, path)
        self.last_saved = state.counters.step


def _causes(err: BaseException) -> list[BaseException]:
    """err, what it was raised from, and every rank's failure DCP gathered into it."""
    found, todo = [], [err]
    while todo:
        exc = todo.pop()
        if exc is None or exc in found:
            continue
        found.append(exc)
        todo += [exc.__cause__, exc.__context__]
        if isinstance(exc, CheckpointException):
            todo += [cause for cause, _ in exc.failures.values()]
    return found


def _storage_error(err: BaseException, tmp: Path) -> errors.StorageError | None:
    for cause in _causes(err):
        if isinstance(cause, OSError):
            path = cause.filename or tmp
            refused = errors.StorageError.from_os_error(cause, path, f"saving checkpoint {tmp.name}")
            if refused is not None:
                return refused
    return None


def _probe_storage(root: Path, tmp: Path, rank: int) -> errors.StorageError | None:
    """Writes and removes 1 MiB next to the checkpoints: the disk's own answer when a save failed without
    saying why."""
    probe = root / f".write_probe_{rank}"
    try:
        with probe.open("wb") as f:
            f.write(b"\0" * (1 << 20))
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        return errors.StorageError.from_os_error(err, tmp, f"saving checkpoint {tmp.name}")
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def load_safely(state_dict: dict[str, Any], path: Path) -> None:
    """dcp.load that unpickles no code (train.safe_load); a failure is a CheckpointError naming the path."""
    try:
        dcp.load(
            state_dict,
            storage_reader=SafeFileSystemReader(str(path)),
            planner=SafeLoadPlanner(),
            checkpoint_id=str(path),
        )
    except UnsafeCheckpointError as err:
        raise CheckpointError(str(err)) from err
    except CheckpointException as err:  # DCP gathers every rank's failure into one BaseException
        causes = [exc for exc, _ in err.failures.values()]
        first = causes[0] if causes else err
        detail = (
            str(first) if isinstance(first, UnsafeCheckpointError) else f"{type(first).__name__}: {first}"
        )
        raise CheckpointError(f"cannot load checkpoint {path}: {detail}") from err
