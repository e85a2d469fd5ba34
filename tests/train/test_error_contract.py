"""`python -m train`'s side of the one error contract: a refused run leaves nothing behind (no .lock, no run
dir), and run.overwrite=true moves the whole old export aside (tokenizer files and listing too)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("data_root")

SHORT = ("trainer.max_steps=6", "trainer.eval_interval=0", "trainer.diag_interval=0")
EXIT_CHECKPOINT = 4


def test_a_refused_run_leaves_no_lock_nor_run_dir(tmp_path, jobs):
    run_dir = tmp_path / "fresh" / "run"
    proc = jobs.in_process(run_dir, *SHORT, f"checkpoint.resume={tmp_path / 'no_such_checkpoint'}")
    assert proc.returncode == EXIT_CHECKPOINT, proc.stdout[-2000:]
    assert proc.stderr.startswith("checkpoint refused: ") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "fresh").exists()


def test_overwrite_moves_the_old_exports_tokenizer_and_listing_aside(tmp_path, jobs, saved_6_steps):
    run_dir = jobs.copy_run(saved_6_steps, tmp_path / "run")
    old = {name: (run_dir / name).read_bytes() for name in ("tokenizer.tiktoken", "export_checksums.json")}
    proc = jobs.in_process(
        run_dir, *SHORT, "checkpoint.resume=none", "run.overwrite=true", "checkpoint.interval=0"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (moved,) = (run_dir / "replaced").iterdir()
    for name, data in old.items():
        assert (moved / name).read_bytes() == data
