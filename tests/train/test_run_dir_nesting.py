"""A run dir may not be a checkpoint, lie inside another run's dir or a checkpoint, or lie above another run:
refused (run dir exit code 5) before anything is written, so the other run still resumes as it was.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("data_root")

SHORT = ("trainer.max_steps=6", "trainer.eval_interval=0", "trainer.diag_interval=0")
EXIT_RUN_DIR = 5


def _snapshot(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("checkpoints/step_00000006", "is a checkpoint directory"),
        ("checkpoints/step_00000006/inner", "a checkpoint: writing there would change"),
        ("nested", "another run's dir: writing there would change"),
        ("..", "lies above"),
    ],
)
def test_a_run_dir_inside_or_above_another_run_is_refused_before_writing(
    tmp_path, jobs, saved_6_steps, where, message
):
    other = jobs.copy_run(saved_6_steps, tmp_path / "parent" / "other")
    before = _snapshot(other)
    run_dir = (other / where).resolve() if where == ".." else other / where
    proc = jobs.in_process(run_dir, *SHORT)
    assert proc.returncode == EXIT_RUN_DIR, proc.stdout[-2000:]
    assert proc.stderr.startswith("run dir refused: run.dir=") and message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert _snapshot(other) == before  # the other run's files, config.yaml included, are untouched
    assert not (run_dir / ".lock").exists()
