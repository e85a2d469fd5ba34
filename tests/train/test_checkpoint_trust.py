"""What a resume or an export loads is what was saved, by this model, and runs no code: crafted, corrupt,
truncated and foreign-model checkpoints are refused (exit 4) naming the file or the fields.

All jobs run in this process (`python -m train` / `python -m train.export` entry points, no subprocess):
a refusal happens before any training step.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch.distributed.checkpoint as dcp
from omegaconf import OmegaConf
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from train.checksums import write_checksums
from train.export import main as export_main

pytestmark = pytest.mark.usefixtures("data_root")

SHORT = ("trainer.max_steps=6", "trainer.eval_interval=0", "trainer.diag_interval=0")
EXIT_CHECKPOINT = 4


@pytest.fixture
def saved_run(saved_6_steps: Path) -> Path:
    return saved_6_steps


class RunsACommand:
    """Unpickling this runs `touch <marker>`: what a crafted checkpoint would do with a real command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _craft_metadata(checkpoint: Path, marker: Path) -> None:
    (checkpoint / ".metadata").write_bytes(pickle.dumps(RunsACommand(marker)))
    write_checksums(checkpoint)  # whoever crafts the file can rewrite the checksums as well


def test_crafted_metadata_does_not_run_code_on_resume(tmp_path, jobs, saved_run):
    ckpt = shutil.copytree(saved_run / "checkpoints" / "step_00000006", tmp_path / "crafted")
    marker = tmp_path / "code-ran"
    _craft_metadata(ckpt, marker)
    proc = jobs.in_process(tmp_path / "victim", *SHORT, f"checkpoint.resume={ckpt}")
    assert not marker.exists()
    assert proc.returncode == EXIT_CHECKPOINT, proc.stderr
    assert f"{ckpt}/.metadata asks to load posix.system" in proc.stderr


def test_crafted_metadata_does_not_run_code_on_export(tmp_path, saved_run, capsys):
    ckpt = shutil.copytree(saved_run / "checkpoints" / "step_00000006", tmp_path / "crafted")
    marker = tmp_path / "code-ran"
    _craft_metadata(ckpt, marker)
    with pytest.raises(SystemExit) as exit_info:
        export_main([str(ckpt), str(tmp_path / "out")])
    assert not marker.exists()
    assert exit_info.value.code == EXIT_CHECKPOINT
    assert f"{ckpt}/.metadata asks to load posix.system" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_crafted_non_tensor_item_does_not_run_code_on_resume(tmp_path, jobs, saved_run):
    """The same checkpoint, re-saved with the wandb id replaced by a pickle that runs a command."""
    source = saved_run / "checkpoints" / "step_00000006"
    dcp_to_torch_save(source, tmp_path / "plain.pt")
    import torch

    state = torch.load(tmp_path / "plain.pt", weights_only=False)  # our own checkpoint: trusted here
    marker = tmp_path / "code-ran"
    state["app"]["counters"]["wandb_id"] = RunsACommand(marker)
    ckpt = tmp_path / "crafted"
    dcp.save(state, checkpoint_id=str(ckpt), no_dist=True)
    shutil.copy(source / "config.yaml", ckpt / "config.yaml")
    write_checksums(ckpt)
    proc = jobs.in_process(tmp_path / "victim", *SHORT, f"checkpoint.resume={ckpt}")
    assert not marker.exists()
    assert proc.returncode == EXIT_CHECKPOINT, proc.stderr
    assert "item 'app.counters.wandb_id' is not plain data" in proc.stderr


def _flip_bytes(path: Path, count: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + count] = bytes(b ^ 0xFF for b in data[middle : middle + count])
    path.write_bytes(bytes(data))


def test_corrupted_newest_checkpoint_is_refused_naming_the_file(tmp_path, jobs, saved_run):
    run_dir = jobs.copy_run(saved_run, tmp_path / "run")
    shard = run_dir / "checkpoints" / "step_00000006" / "__0_0.distcp"
    _flip_bytes(shard)
    before = (run_dir / "metrics.jsonl").read_text()
    proc = jobs.in_process(run_dir, *SHORT, "trainer.max_steps=8")
    assert proc.returncode == EXIT_CHECKPOINT, proc.stdout[-2000:]
    assert f"{shard} has sha256" in proc.stderr and "checkpoint.fallback=true" in proc.stderr
    assert len(proc.stderr.splitlines()) < 5  # a message, not a traceback
    assert (run_dir / "metrics.jsonl").read_text() == before  # nothing was written


def test_truncated_newest_checkpoint_is_refused_naming_the_file(tmp_path, jobs, saved_run):
    run_dir = jobs.copy_run(saved_run, tmp_path / "run")
    shard = run_dir / "checkpoints" / "step_00000006" / "__0_0.distcp"
    size = shard.stat().st_size
    with shard.open("r+b") as f:
        f.truncate(size // 2)
    proc = jobs.in_process(run_dir, *SHORT, "trainer.max_steps=8")
    assert proc.returncode == EXIT_CHECKPOINT
    assert f"{shard} is {size // 2} bytes, {size} when saved" in proc.stderr


def test_fallback_resumes_from_the_previous_checkpoint_and_keeps_the_corrupt_one(tmp_path, jobs, saved_run):
    run_dir = jobs.copy_run(saved_run, tmp_path / "run")
    ckpts = run_dir / "checkpoints"
    _flip_bytes(ckpts / "step_00000006" / "__0_0.distcp")
    proc = jobs.in_process(run_dir, *SHORT, "checkpoint.fallback=true")
    assert proc.returncode == 0, proc.stderr
    assert "skipping corrupt" in proc.stdout and "step_00000003 at step 3" in proc.stdout
    assert (ckpts / "step_00000006.corrupt" / "__0_0.distcp").is_file()
    # The re-trained step 6 is a fresh, verified checkpoint again.
    assert (ckpts / "step_00000006" / "checksums.json").is_file()


@pytest.mark.parametrize(
    ("attention", "differs"),
    [
        ("diff_v2_cross_group", "model.pairing: checkpoint 'grouped', requested 'cross_group'"),
        ("diff_v2_no_lambda", "model.lambda_mode: checkpoint 'sigmoid', requested 'none'"),
        ("diff_v2_linear_lambda", "model.lambda_mode: checkpoint 'sigmoid', requested 'linear'"),
    ],
)
def test_resume_as_another_attention_variant_is_refused_naming_the_fields(
    tmp_path, jobs, saved_run, attention, differs
):
    run_dir = jobs.copy_run(saved_run, tmp_path / "run")
    saved_config = (run_dir / "config.yaml").read_text()
    proc = jobs.in_process(run_dir, *SHORT, "trainer.max_steps=8", f"attention={attention}")
    assert proc.returncode == EXIT_CHECKPOINT, proc.stdout[-2000:]
    assert (
        differs in proc.stderr
        and f"model.variant: checkpoint 'diff_v2', requested '{attention}'" in proc.stderr
    )
    assert (run_dir / "config.yaml").read_text() == saved_config  # not overwritten by the refused run
    assert OmegaConf.load(run_dir / "config.yaml").model.variant == "diff_v2"
