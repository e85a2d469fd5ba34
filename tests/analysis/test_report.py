"""Run summaries and the report's plots, from metrics.jsonl files written as the trainer writes them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from analysis.report import METRICS, main, series
from analysis.runs import find_runs
from launch.summary import format_table, summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(run_dir: Path, lr_scale: float, diff: bool, torn_tail: bool = False) -> None:
    """A run as train/loop.py logs it: step rows, diagnostics rows, val rows, then the end event."""
    rows: list[dict] = []
    for step in (1, 10, 20, 30):
        loss = 9.0 - lr_scale * math.log(step + 1)
        rows.append(
            {
                "step": step,
                "loss": loss,
                "lr": 1e-3,
                "grad_norm": 1.0 / step,
                "tokens_per_s": 1000.0 * step,
                "tokens_per_s_per_device": 500.0 * step,
                "loss_spikes": 0,
                "grad_spikes": 0,
            }
        )
        if step in (10, 30):
            diag = {
                "step": step,
                "diag/act_max/L0": 10.0 * step,
                "diag/act_max/L1": 20.0 * step,
                "diag/act_max/max": 20.0 * step,
            }
            if diff:
                diag |= {
                    "diag/lambda_mean/L0": 0.4,
                    "diag/lambda_mean/L1": 0.6,
                    "diag/lambda_std/L0": 0.1,
                    "diag/lambda_std/L1": 0.3,
                }
            rows.append(diag)
            rows.append({"step": step, "val_loss": loss + 0.5})
    rows.append(
        {
            "event": "end",
            "step": 30,
            "loss": loss if diff else 7.0,
            "val_loss": 7.25,
            "tokens_per_s": 31000.0,
            "loss_spikes": 2,
            "grad_spikes": 1,
        }
    )
    run_dir.mkdir(parents=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (run_dir / "metrics.jsonl").write_text(text + ('{"step": 31, "lo' if torn_tail else ""))


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    write_run(tmp_path / "sweep" / "0-attention-baseline", 0.5, diff=False)
    write_run(tmp_path / "sweep" / "1-attention-diff_v2", 0.8, diff=True, torn_tail=True)
    (tmp_path / "sweep" / "multirun.yaml").write_text("hydra: {}\n")
    return tmp_path / "sweep"


def test_summary_reads_the_end_event_and_survives_a_torn_line(sweep_dir: Path) -> None:
    row = summarize(sweep_dir / "1-attention-diff_v2")
    assert row.steps == 30
    assert row.final_loss == pytest.approx(9.0 - 0.8 * math.log(31))
    assert row.last_val_loss == 7.25
    assert row.tokens_per_s == 31000.0
    assert (row.loss_spikes, row.grad_spikes, row.exit_code) == (2, 1, None)


def test_table_has_a_row_per_run_with_its_numbers(sweep_dir: Path) -> None:
    table = format_table([summarize(r) for r in find_runs([sweep_dir])])
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["trial", "steps", "train"]
    assert lines[2].split() == ["0-attention-baseline", "30", "7.0000", "7.2500", "31,000", "2/1", "-"]
    assert lines[3].startswith("1-attention-diff_v2")


def test_per_layer_diagnostics_use_the_overall_figure_or_the_layer_mean(sweep_dir: Path) -> None:
    from train.metrics import read_metrics

    records = read_metrics(sweep_dir / "1-attention-diff_v2" / "metrics.jsonl")
    by_name = {m.name: m for m in METRICS}
    assert series(records, by_name["act_max"]) == ([10.0, 30.0], [200.0, 600.0])
    assert series(records, by_name["lambda_mean"]) == ([10.0, 30.0], [0.5, 0.5])
    assert series(records, by_name["lambda_std"])[1] == [pytest.approx(0.2)] * 2
    baseline = read_metrics(sweep_dir / "0-attention-baseline" / "metrics.jsonl")
    assert series(baseline, by_name["lambda_mean"]) == ([], [])


def test_report_writes_a_png_per_metric_and_prints_the_table(
    sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plots"
    assert main([str(sweep_dir), "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {
        "loss.png",
        "val_loss.png",
        "grad_norm.png",
        "lambda_mean.png",
        "lambda_std.png",
        "act_max.png",
        "loss_spikes.png",
        "grad_spikes.png",
    } == names
    assert all((out / n).read_bytes().startswith(PNG_MAGIC) for n in names)
    printed = capsys.readouterr().out
    assert "0-attention-baseline" in printed and "1-attention-diff_v2" in printed


def test_report_defaults_to_a_report_dir_inside_a_single_run(sweep_dir: Path) -> None:
    run = sweep_dir / "0-attention-baseline"
    assert main([str(run)]) == 0
    assert (run / "report" / "loss.png").exists()
    assert not (run / "report" / "lambda_mean.png").exists()  # a baseline logs no lambda


def test_report_names_a_path_without_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err
