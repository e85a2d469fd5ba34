"""A 2x2 sweep via `python -m launch --multirun`: one torchrun job per trial, one wandb group, one table."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import yaml

from analysis.report import METRICS, series
from analysis.report import main as report_main
from train.metrics import read_metrics

pytestmark = pytest.mark.slow

LAMBDA = next(m for m in METRICS if m.name == "lambda_mean")


def wandb_run_record(path: Path):
    """The RunRecord of an offline .wandb file: a leveldb-style log (7-byte file header, 32 KiB blocks,
    7-byte record headers: crc32, length, type full/first/middle/last) of wandb Record protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, payloads, parts = 7, 32768, [], []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            parts = [chunk]
        elif kind == 3:
            parts.append(chunk)
        elif kind == 4:
            payloads.append(b"".join([*parts, chunk]))
    records = [pb.Record.FromString(p) for p in payloads]
    return next(r.run for r in records if r.WhichOneof("record_type") == "run")


TRIALS = [
    "0-lr-0.001_attention-baseline",
    "1-lr-0.001_attention-diff_v2",
    "2-lr-0.002_attention-baseline",
    "3-lr-0.002_attention-diff_v2",
]


def test_two_by_two_sweep_runs_four_named_trials_in_one_wandb_group(
    data_env, tmp_path: Path, tiny, run_launch, table_rows
) -> None:
    sweep_dir = tmp_path / "sweeps" / "lr_x_attention"
    args = [
        "--multirun",
        *tiny,
        "wandb.mode=offline",
        "optim.lr=1e-3,2e-3",
        "attention=baseline,diff_v2",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    proc = run_launch(args, data_env, tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == TRIALS
    for name in TRIALS:
        run_dir = sweep_dir / name
        config = yaml.safe_load((run_dir / "config.yaml").read_text())  # the trainer's resolved config
        assert (config["run"]["name"], config["wandb"]["group"]) == (name, "lr_x_attention")
        assert config["model"]["attention"] == name.rsplit("-", 1)[1]
        assert config["optim"]["lr"] == float(name.split("-")[2].split("_")[0])
        # wandb's own record of the offline run (the run record in its .wandb file) carries group and name.
        (wandb_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
        run = wandb_run_record(wandb_file)
        assert (run.run_group, run.display_name) == ("lr_x_attention", name)
        assert any(r.get("event") == "end" for r in read_metrics(run_dir / "metrics.jsonl"))
    rows = table_rows(proc.stdout)
    assert list(rows) == TRIALS
    for cells in rows.values():
        steps, loss, _val, tokens_per_s, spikes, exit_code = cells
        assert (steps, exit_code) == ("4", "0")
        assert float(loss) > 0 and float(tokens_per_s.replace(",", "")) > 0 and "/" in spikes
    # The report reads the same runs: curves per metric, DIFF V2's lambda only from its own trials.
    assert report_main([str(sweep_dir), "--out", str(tmp_path / "report")]) == 0
    pngs = {p.name for p in (tmp_path / "report").iterdir()}
    assert {"loss.png", "grad_norm.png", "lambda_mean.png", "act_max.png"} <= pngs
    lambda_runs = [n for n in TRIALS if series(read_metrics(sweep_dir / n / "metrics.jsonl"), LAMBDA)[0]]
    assert lambda_runs == [n for n in TRIALS if n.endswith("diff_v2")]
