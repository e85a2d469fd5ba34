"""A checksum listing vouches only for what it lists: it must cover every file of the checkpoint, and an
export (weights, config, tokenizer) carries one of its own that every loader of an export checks.

Through the public entry points, in this process: `python -m train` (resume), `python -m infer.sample`,
`python -m train.export` and the documented `train.export.load_exported`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from infer.sample import main as sample_main
from train.checkpoint import CheckpointError
from train.export import EXPORT_CHECKSUMS, load_exported
from train.export import main as export_main

pytestmark = pytest.mark.usefixtures("data_root")

SHORT = ("trainer.max_steps=8", "trainer.eval_interval=0", "trainer.diag_interval=0")
EXIT_CHECKPOINT = 4


def _flip_bytes(path: Path, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + count] = bytes(b ^ 0xFF for b in data[middle : middle + count])
    path.write_bytes(bytes(data))


def _edit_listing(checkpoint: Path, keep: object, name: str = "checksums.json") -> None:
    listing = checkpoint / name
    entries = json.loads(listing.read_text())
    entries["files"] = {name: e for name, e in entries["files"].items() if keep(name)}
    listing.write_text(json.dumps(entries))


@pytest.mark.parametrize("emptied", [True, False], ids=["files-emptied", "shard-entry-removed"])
def test_a_listing_leaving_out_a_corrupted_shard_refuses_the_resume(tmp_path, jobs, saved_6_steps, emptied):
    run_dir = jobs.copy_run(saved_6_steps, tmp_path / "run")
    ckpt = run_dir / "checkpoints" / "step_00000006"
    shard = ckpt / "__0_0.distcp"
    _flip_bytes(shard)
    _edit_listing(ckpt, (lambda name: False) if emptied else (lambda name: name != shard.name))
    proc = jobs.in_process(run_dir, *SHORT)
    assert proc.returncode == EXIT_CHECKPOINT, proc.stdout[-2000:]
    expected = "lists no files" if emptied else f"{shard} is not listed in"
    assert expected in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_a_corrupted_export_is_refused_by_infer_and_load_exported_unless_no_verify(
    tmp_path, saved_6_steps, capsys
):
    export = tmp_path / "export"
    export.mkdir()
    for name in ("model.safetensors", "model_config.json", "tokenizer.tiktoken", "tokenizer.json"):
        shutil.copy(saved_6_steps / name, export / name)
    shutil.copy(saved_6_steps / EXPORT_CHECKSUMS, export / EXPORT_CHECKSUMS)  # the run's export is sealed
    load_exported(export)  # intact: loads
    weights = export / "model.safetensors"
    _flip_bytes(weights)
    with pytest.raises(SystemExit) as exited:
        sample_main([str(export), "--prompt", "def", "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert exited.value.code == EXIT_CHECKPOINT
    assert err.startswith(f"checkpoint refused: {weights} has sha256") and err.count("\n") == 1, err
    with pytest.raises(CheckpointError, match="has sha256"):
        load_exported(export)
    load_exported(export, verify=False)  # the escape hatch, as for checkpoints
    sample_main([str(export), "--prompt", "def", "--max-new-tokens", "2", "--no-verify"])


def test_train_export_seals_its_output_and_an_unlisted_export_file_is_refused(tmp_path, saved_6_steps):
    out = tmp_path / "out"
    export_main([str(saved_6_steps / "checkpoints" / "step_00000006"), str(out)])
    listed = json.loads((out / EXPORT_CHECKSUMS).read_text())["files"]
    assert sorted(listed) == [
        "model.safetensors",
        "model_config.json",
        "tokenizer.json",
        "tokenizer.tiktoken",
    ]
    _edit_listing(out, lambda name: name != "tokenizer.tiktoken", EXPORT_CHECKSUMS)
    with pytest.raises(CheckpointError, match="tokenizer.tiktoken is not listed"):
        load_exported(out)
