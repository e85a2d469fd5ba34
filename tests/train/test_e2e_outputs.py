"""What a finished run leaves behind: the offline wandb run and the exported weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.export import load_exported

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("data_root")]


def _wandb_records(run_file: Path) -> list[dict]:
    """The records of a .wandb log, read back by wandb's own reader."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(run_file)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_offline_wandb_run_holds_the_logged_metrics(jobs, fsdp_straight):
    (run_file,) = (fsdp_straight / "wandb").glob("offline-run-*/run-*.wandb")
    records = _wandb_records(run_file)
    run = next(r["run"] for r in records if r["type"] == "run")
    assert run["project"] == "diffv2" and run["tags"] == ["test"]
    history = {r["history"]["step"]["num"]: r["history"]["item"] for r in records if r["type"] == "history"}
    logged = jobs.train_rows(fsdp_straight)
    for step in range(1, 13):
        assert history[step]["loss"] == pytest.approx(logged[step]["loss"])
        assert history[step]["lr"] == pytest.approx(logged[step]["lr"])
    assert "val_loss" in history[12] and any(k.startswith("diag/lambda_mean/") for k in history[6])
    # the claims' diagnostics (under FSDP: the hooks read unsharded weights) and the spike flags reach wandb
    for key in ("diag/context_rms/L0", "diag/sink_mass_max/L0", "diag/act_ratio/max", "diag/qk_logit_max/L1"):
        assert key in history[6], key
    assert {"loss_spike", "grad_spike", "loss_spikes", "grad_spikes"} <= set(history[1])
    # The run id is the one the checkpoint carries, so a resumed job continues this wandb run.
    assert run_file.name == f"run-{run['run_id']}.wandb"


def test_exported_weights_load_into_a_plain_cpu_transformer(tmp_path, fsdp_straight):
    model = load_exported(fsdp_straight)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "train.export",
            str(fsdp_straight / "checkpoints" / "step_00000012"),
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    from_checkpoint = load_exported(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, from_checkpoint.state_dict()[name]), name
    tokens = torch.randint(0, model.cfg.vocab_size, (1, 16))
    assert torch.isfinite(model(tokens)).all()
