"""`python -m launch.report <run dirs or sweep dirs> [--out DIR]`: one PNG per metric, a line per run, and the
comparison table, from each run's metrics.jsonl.

Diagnostics are logged per layer (`diag/<stat>/L<i>`); a plot shows the trainer's overall figure
(`diag/<stat>/max` or `/mean`) when logged, else the max or mean over layers.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from launch.metrics import METRICS_FILE, find_runs, format_table, read_metrics, summarize


@dataclass(frozen=True)
class Metric:
    """One plot."""

    name: str
    """File name (<name>.png) and title."""
    key: str
    """metrics.jsonl key, or `diag/<stat>` for a per-layer diagnostic."""
    label: str
    """y-axis label."""
    reduce: str = "mean"
    """How per-layer diagnostics combine when no overall figure was logged: mean | max."""


METRICS = (
    Metric("loss", "loss", "train loss"),
    Metric("val_loss", "val_loss", "validation loss"),
    Metric("grad_norm", "grad_norm", "global grad norm (before clipping)"),
    Metric("lambda_mean", "diag/lambda_mean", "sigmoid(lambda): mean over heads and layers"),
    Metric("lambda_std", "diag/lambda_std", "sigmoid(lambda): std over heads, mean over layers"),
    Metric("act_max", "diag/act_max", "max |activation|, over layers", reduce="max"),
    Metric("qk_logit_max", "diag/qk_logit_max", "max qk logit, over layers", reduce="max"),
    Metric("sink_mass", "diag/sink_mass", "attention mass on the first token, mean over layers"),
    Metric("context_rms", "diag/context_rms", "attention context RMS, mean over layers"),
)


def series(records: Sequence[dict], metric: Metric) -> tuple[list[float], list[float]]:
    """(steps, values) of one metric in one run's records; empty when the run never logged it."""
    steps: list[float] = []
    values: list[float] = []
    layer_key = re.compile(re.escape(metric.key) + r"/L\d+$")
    for rec in records:
        if rec.get("event") is not None or not isinstance(rec.get("step"), int | float):
            continue
        value = rec.get(metric.key)
        if value is None and metric.key.startswith("diag/"):
            value = rec.get(f"{metric.key}/{metric.reduce}")
            if value is None:
                per_layer = [v for k, v in rec.items() if layer_key.match(k) and isinstance(v, int | float)]
                if per_layer:
                    value = max(per_layer) if metric.reduce == "max" else sum(per_layer) / len(per_layer)
        if isinstance(value, int | float) and not isinstance(value, bool):
            steps.append(float(rec["step"]))
            values.append(float(value))
    return steps, values


def plot_runs(runs: Sequence[Path], out_dir: Path, metrics: Sequence[Metric] = METRICS) -> list[Path]:
    """Writes <out_dir>/<metric>.png for every metric at least one run logged; the paths written."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on clusters or in CI
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    records = {run: read_metrics(run / METRICS_FILE) for run in runs}
    written: list[Path] = []
    for metric in metrics:
        lines = [(run.name, *series(records[run], metric)) for run in runs]
        lines = [line for line in lines if line[1]]
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(8, 5))
        for name, steps, values in lines:
            ax.plot(steps, values, label=name, marker="." if len(steps) < 30 else None)
        ax.set_xlabel("step")
        ax.set_ylabel(metric.label)
        ax.set_title(metric.name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out_dir / f"{metric.name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.report", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "paths", nargs="+", help="run dirs (holding metrics.jsonl) or sweep dirs (holding runs)"
    )
    parser.add_argument(
        "--out", help="where the PNGs go (default: <path>/report for one path, else ./report)"
    )
    args = parser.parse_args(argv)
    try:
        runs = find_runs(args.paths)
    except FileNotFoundError as exc:
        print(f"launch.report: error: {exc}", file=sys.stderr)
        return 2
    out = (
        Path(args.out)
        if args.out
        else (Path(args.paths[0]) / "report" if len(args.paths) == 1 else Path("report"))
    )
    written = plot_runs(runs, out)
    print(format_table([summarize(run) for run in runs]))
    print(f"\n{len(written)} plots in {out}: {', '.join(p.name for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
