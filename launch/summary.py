"""The sweep's closing table: one summary row per run from its metrics.jsonl and launch.json.

The launcher prints it when a sweep ends; run analysis (analysis/) prints it too, above its report."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from train.metrics import METRICS_FILE, read_metrics

__all__ = ["STATUS_FILE", "RunSummary", "format_table", "summarize"]

STATUS_FILE = "launch.json"
"""Written by the launcher into each run dir: the command, the overrides and torchrun's exit code."""


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _last(records: Sequence[dict], key: str) -> float | None:
    for rec in reversed(records):
        value = _num(rec.get(key))
        if value is not None:
            return value
    return None


@dataclass
class RunSummary:
    """One row of the comparison table."""

    name: str
    """The run's name (its directory's name)."""
    run_dir: Path
    """Where its files are."""
    steps: int | None
    """Last step logged."""
    final_loss: float | None
    """Train loss at the end (the end event's, else the last logged)."""
    last_val_loss: float | None
    """Last validation loss logged."""
    tokens_per_s: float | None
    """Throughput: the end event's figure, else the mean of the logged steps after the first."""
    loss_spikes: int | None
    """Loss spikes counted by the trainer (end event)."""
    grad_spikes: int | None
    """Grad-norm spikes counted by the trainer (end event)."""
    exit_code: int | None
    """torchrun's exit code from launch.json (None: not started by python -m launch, or still running)."""


def summarize(run_dir: Path) -> RunSummary:
    records = read_metrics(run_dir / METRICS_FILE)
    end = next((r for r in reversed(records) if r.get("event") == "end"), {})
    steps = _last(records, "step")
    tps = _num(end.get("tokens_per_s"))
    if tps is None:
        logged = [v for r in records if r.get("event") is None and (v := _num(r.get("tokens_per_s")))]
        # The first logged window pays for warm-up (allocation, compilation): leave it out when we can.
        window = logged[1:] or logged
        tps = sum(window) / len(window) if window else None
    exit_code = None
    status = run_dir / STATUS_FILE
    if status.exists():
        exit_code = json.loads(status.read_text()).get("exit_code")
    spikes = [_num(end.get(k)) for k in ("loss_spikes", "grad_spikes")]
    return RunSummary(
        name=run_dir.name,
        run_dir=run_dir,
        steps=int(steps) if steps is not None else None,
        final_loss=_last(records, "loss"),
        last_val_loss=_last(records, "val_loss"),
        tokens_per_s=tps,
        loss_spikes=int(spikes[0]) if spikes[0] is not None else None,
        grad_spikes=int(spikes[1]) if spikes[1] is not None else None,
        exit_code=exit_code,
    )


def _cell(value: float | int | None, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


TABLE_HEADER = ("trial", "steps", "train loss", "val loss", "tokens/s", "spikes (loss/grad)", "exit")


def format_table(rows: Sequence[RunSummary]) -> str:
    """A plain-text table, one line per run, columns padded to fit."""
    body = [
        (
            r.name,
            _cell(r.steps, "d"),
            _cell(r.final_loss, ".4f"),
            _cell(r.last_val_loss, ".4f"),
            _cell(r.tokens_per_s, ",.0f"),
            f"{_cell(r.loss_spikes, 'd')}/{_cell(r.grad_spikes, 'd')}",
            _cell(r.exit_code, "d"),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [TABLE_HEADER, *body]) for i in range(len(TABLE_HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in body]
    header = "  ".join(h.ljust(w) for h, w in zip(TABLE_HEADER, widths, strict=True)).rstrip()
    return "\n".join([header, "  ".join("-" * w for w in widths), *lines])
