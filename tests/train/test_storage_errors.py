"""A disk that refuses writes stops `python -m train` with one line naming the path and the cause, and its
own exit code (6): a full disk during a checkpoint save (the previous checkpoint intact, the partial tmp dir
removed) and a read-only run dir at start.

The disks are real: small tmpfs mounts (the tests run as root, as CI does; elsewhere they are skipped).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from train.checksums import verify_checksums

pytestmark = pytest.mark.usefixtures("data_root")

SHORT = ("trainer.max_steps=6", "trainer.eval_interval=0", "trainer.diag_interval=0", "checkpoint.interval=3")
EXIT_STORAGE = 6


@contextlib.contextmanager
def tmpfs(path: Path, size_bytes: int, read_only: bool = False) -> Iterator[Path]:
    path.mkdir(parents=True)
    options = f"size={size_bytes}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_full_disk_during_a_save_is_one_line_exit_6_and_keeps_the_previous_checkpoint(
    tmp_path, jobs, saved_6_steps
):
    checkpoint = saved_6_steps / "checkpoints" / "step_00000003"
    one_checkpoint = sum(p.stat().st_size for p in checkpoint.iterdir())
    # Room for the run's small files and one checkpoint (step 3), not for a second one (step 6).
    with tmpfs(tmp_path / "disk", int(one_checkpoint * 1.5) + (256 << 10)) as disk:
        run_dir = disk / "run"
        proc = jobs.in_process(run_dir, *SHORT)
        assert proc.returncode == EXIT_STORAGE, proc.stderr[-3000:]
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert proc.stderr.startswith(f"storage error: {run_dir / 'checkpoints'}"), proc.stderr
        assert "no space left on device while saving checkpoint .tmp_step_00000006" in proc.stderr
        kept = run_dir / "checkpoints" / "step_00000003"
        verify_checksums(kept)  # the previous checkpoint is whole
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000003"]


def test_a_read_only_run_dir_is_one_line_exit_6_naming_it(tmp_path, jobs):
    with tmpfs(tmp_path / "ro", 1 << 20, read_only=True) as ro:
        proc = jobs.in_process(ro / "run", *SHORT)
    assert proc.returncode == EXIT_STORAGE, proc.stderr[-3000:]
    assert proc.stderr == (
        f"storage error: {ro / 'run'}: read-only file system while creating the run dir's lock\n"
    ), proc.stderr[-3000:]
