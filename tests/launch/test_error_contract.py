"""`python -m launch`'s side of the one error contract: it exits with the workers' documented code (torchrun
itself exits 1 whatever it was), refuses a run dir inside another run's checkpoint, and refuses a credential
URL before any output could carry it."""

from __future__ import annotations

import json
from pathlib import Path

KEY, SECRET = "AKIAEXAMPLEKEY", "wJalr/SECRETxyz"
EXIT_CONFIG, EXIT_CHECKPOINT, EXIT_RUN_DIR = 2, 4, 5


def test_launch_exits_with_the_workers_code_not_torchruns(data_env, tmp_path: Path, tiny, run_launch) -> None:
    run_dir = tmp_path / "run"
    args = [*tiny, f"run.dir={run_dir}", f"checkpoint.resume={tmp_path / 'missing'}"]
    proc = run_launch([*args, "launch.nproc_per_node=1"], data_env, tmp_path)
    assert proc.returncode == EXIT_CHECKPOINT, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((run_dir / "launch.json").read_text())["exit_code"] == EXIT_CHECKPOINT
    assert "checkpoint refused: " in proc.stdout + proc.stderr
    assert not (run_dir / ".lock").exists()  # the refused run left launch's files only


def test_launch_refuses_a_run_dir_inside_a_checkpoint(tmp_path: Path, launch_here) -> None:
    checkpoint = tmp_path / "other" / "checkpoints" / "step_00000010"
    checkpoint.mkdir(parents=True)
    (checkpoint / ".metadata").write_bytes(b"")
    proc = launch_here([f"run.dir={checkpoint}"], tmp_path)
    assert proc.returncode == EXIT_RUN_DIR, proc.stderr
    assert f"run.dir={checkpoint} is a checkpoint directory" in proc.stderr
    assert sorted(p.name for p in checkpoint.iterdir()) == [".metadata"]  # no launch.json, no log


def test_launch_refuses_a_credential_url_without_printing_it(tmp_path: Path, launch_here) -> None:
    proc = launch_here([f"data.dir=s3://{KEY}:{SECRET}@bucket/x", f"run.dir={tmp_path}/run"], tmp_path)
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert "holds a URL with credentials" in proc.stderr
    assert KEY not in proc.stdout + proc.stderr and SECRET not in proc.stdout + proc.stderr
    assert not (tmp_path / "run").exists()


def _experiment(tmp_path: Path, body: str) -> Path:
    """A --config-dir holding experiment/leaky.yaml: a recipe whose credential only composing reveals."""
    config_dir = tmp_path / "conf"
    (config_dir / "experiment").mkdir(parents=True)
    (config_dir / "experiment" / "leaky.yaml").write_text("# @package _global_\n" + body)
    return config_dir


def test_a_credential_in_a_sweep_recipe_is_refused_before_the_sweep_dir_is_written(
    tmp_path: Path, launch_here
) -> None:
    config_dir = _experiment(
        tmp_path, f"hydra:\n  sweeper:\n    params:\n      data.dir: s3://{KEY}:{SECRET}@bucket/x,/tmp/y\n"
    )
    sweep_dir = tmp_path / "sweep"
    args = [
        "--multirun",
        "--config-dir",
        str(config_dir),
        "+experiment=leaky",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    proc = launch_here(
        [*args, "trainer.max_steps=0"], tmp_path
    )  # a second error quoting the trial's overrides
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert "hydra.sweeper.params.data.dir holds a URL with credentials" in proc.stderr
    assert KEY not in proc.stdout + proc.stderr and SECRET not in proc.stdout + proc.stderr
    assert not sweep_dir.exists()  # Hydra's multirun.yaml would have recorded the secret


def test_hydras_own_error_about_a_credential_in_a_config_file_is_redacted(
    tmp_path: Path, launch_here
) -> None:
    config_dir = _experiment(tmp_path, f"trainer:\n  max_steps: s3://{KEY}:{SECRET}@bucket/x\n")
    args = ["--config-dir", str(config_dir), "+experiment=leaky", f"run.dir={tmp_path}/run"]
    proc = launch_here(args, tmp_path)
    assert proc.returncode == 1, proc.stderr  # Hydra's wrong-type error
    assert "Value 's3://***@bucket/x' of type 'str' could not be converted to Integer" in proc.stderr
    assert KEY not in proc.stdout + proc.stderr and SECRET not in proc.stdout + proc.stderr
