"""`python -m analysis.report <run or sweep dirs> [--out DIR] [--reference VARIANT]`: the comparison tables,
one PNG per metric and a markdown report beside them, from each run's metrics.jsonl and config.yaml.

Trials that differ only in their seed form one variant (analysis/study.py): its PNG line is the mean over
seeds with a band from the lowest to the highest seed, and its table row holds the mean and std over seeds
and the difference to the reference variant (default diff_v2), paired by seed, with its 95% interval.
Diagnostics are logged per layer (`diag/<stat>/L<i>`); a plot shows the trainer's overall figure
(`diag/<stat>/max` or `/mean`) when logged, else the max or mean over layers.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from analysis.runs import find_runs
from analysis.study import VariantResult, find_variant, load_study
from analysis.tables import (
    TRIAL_HEADER,
    VARIANT_HEADER,
    downstream_keys,
    downstream_table,
    render_markdown,
    render_text,
    trial_rows,
    variant_rows,
    verdicts,
)
from launch.summary import format_table, summarize
from train.metrics import METRICS_FILE, read_metrics

DEFAULT_REFERENCE = "diff_v2"
REPORT_FILE = "report.md"


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
    """How per-layer diagnostics combine when no overall figure was logged: mean | max | min."""


METRICS = (
    Metric("loss", "loss", "train loss"),
    Metric("val_loss", "val_loss", "validation loss"),
    Metric("grad_norm", "grad_norm", "global grad norm (before clipping)"),
    Metric("loss_spikes", "loss_spikes", "loss spikes so far"),
    Metric("grad_spikes", "grad_spikes", "grad-norm spikes so far"),
    Metric("lambda_mean", "diag/lambda_mean", "lambda: mean over heads and layers"),
    Metric("lambda_std", "diag/lambda_std", "lambda: std over tokens and heads, mean over layers"),
    Metric("act_max", "diag/act_max", "max |activation| at block outputs, over layers", reduce="max"),
    Metric("act_ratio", "diag/act_ratio", "max |x| / RMS(x) at block outputs, over layers", reduce="max"),
    Metric("qk_logit_max", "diag/qk_logit_max", "max qk logit, over layers", reduce="max"),
    Metric("sink_mass", "diag/sink_mass", "attention on the first token (later queries), mean over maps"),
    Metric("sink_mass_max", "diag/sink_mass_max", "attention on the first token, most sink-like map", "max"),
    Metric("context_rms", "diag/context_rms", "context RMS / RMS of values read, mean over heads"),
    Metric("context_rms_min", "diag/context_rms_min", "context RMS / values RMS, smallest head", "min"),
)


def series(records: Sequence[dict], metric: Metric) -> tuple[list[float], list[float]]:
    """(steps, values) of one metric in one run's records; empty when the run never logged it."""
    steps: list[float] = []
    values: list[float] = []
    layer_key = re.compile(re.escape(metric.key) + r"/L\d+$")
    reducers = {"max": max, "min": min, "mean": statistics.fmean}
    for rec in records:
        if rec.get("event") is not None or not isinstance(rec.get("step"), int | float):
            continue
        value = rec.get(metric.key)
        if value is None and metric.key.startswith("diag/"):
            value = rec.get(f"{metric.key}/{metric.reduce}")
            if value is None:
                per_layer = [v for k, v in rec.items() if layer_key.match(k) and isinstance(v, int | float)]
                if per_layer:
                    value = reducers[metric.reduce](per_layer)
        if isinstance(value, int | float) and not isinstance(value, bool):
            steps.append(float(rec["step"]))
            values.append(float(value))
    return steps, values


def band(
    runs: Sequence[Sequence[dict]], metric: Metric
) -> tuple[list[float], list[float], list[float], list[float]]:
    """(steps, mean, low, high) over runs at the steps every run logged (all of one run's, for one run)."""
    per_run = [dict(zip(*series(records, metric), strict=True)) for records in runs]
    per_run = [s for s in per_run if s]
    if not per_run:
        return [], [], [], []
    steps = sorted(set.intersection(*(set(s) for s in per_run)))
    columns = [[s[step] for s in per_run] for step in steps]
    return steps, [statistics.fmean(c) for c in columns], [min(c) for c in columns], [max(c) for c in columns]


def plot_groups(
    groups: dict[str, list[Path]], out_dir: Path, metrics: Sequence[Metric] = METRICS
) -> list[Path]:
    """Writes <out_dir>/<metric>.png for every metric at least one run logged: a line per group (the mean over
    its runs) with a band from its lowest to its highest run; the paths written."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on clusters or in CI
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    records = {name: [read_metrics(run / METRICS_FILE) for run in runs] for name, runs in groups.items()}
    written: list[Path] = []
    for metric in metrics:
        lines = [(name, *band(recs, metric)) for name, recs in records.items()]
        lines = [line for line in lines if line[1]]
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(8, 5))
        for name, steps, mean, low, high in lines:
            (drawn,) = ax.plot(steps, mean, label=name, marker="." if len(steps) < 30 else None)
            if len(groups[name]) > 1:
                ax.fill_between(steps, low, high, color=drawn.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel("step")
        ax.set_ylabel(metric.label)
        seeds = max(len(runs) for runs in groups.values())
        ax.set_title(metric.name + (f" (mean, band: min-max over {seeds} seeds)" if seeds > 1 else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out_dir / f"{metric.name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def plot_runs(runs: Sequence[Path], out_dir: Path, metrics: Sequence[Metric] = METRICS) -> list[Path]:
    """One line per run (no grouping)."""
    return plot_groups({run.name: [run] for run in runs}, out_dir, metrics)


def _downstream_part(variants: Sequence[VariantResult]) -> list[str]:
    table = downstream_table(variants)
    if table is None:
        return []
    return [
        "Downstream tasks (trainer.downstream_tasks), last score, mean ± std over seeds:",
        "",
        render_markdown(*table),
        "",
    ]


def downstream_metrics(variants: Sequence[VariantResult]) -> list[Metric]:
    """One plot per downstream score the runs logged."""
    return [Metric(key.replace("/", "_"), key, key) for key in downstream_keys(variants)]


def study_markdown(variants: Sequence[VariantResult], reference: VariantResult, plots: Sequence[Path]) -> str:
    """The report page: verdicts, the per-variant and per-trial tables, then the plots (paths as given)."""
    parts = [
        f"Reference variant: **{reference.name}**. Δ = variant − reference, final validation loss, paired by "
        "seed; ± is the half-width of the 95% interval over seeds, and 'beyond noise' says whether it "
        "excludes 0.",
        "",
        *(f"- {line}" for line in verdicts(variants, reference)),
        "",
        render_markdown(VARIANT_HEADER, variant_rows(variants, reference)),
        "",
        *_downstream_part(variants),
        "<details><summary>Per trial</summary>",
        "",
        render_markdown(TRIAL_HEADER, trial_rows(variants, reference)),
        "",
        "</details>",
        "",
        *(f"![{p.stem}]({p.as_posix()})" for p in plots),
    ]
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "paths", nargs="+", help="run dirs (holding metrics.jsonl) or sweep dirs (holding runs)"
    )
    parser.add_argument(
        "--out", help="where the PNGs and report.md go (default: <path>/report for one path, else ./report)"
    )
    parser.add_argument(
        "--reference",
        help=f"variant the others are compared to (default: {DEFAULT_REFERENCE} when the study has it, "
        "else its first variant)",
    )
    args = parser.parse_args(argv)
    try:
        runs = find_runs(args.paths)
    except FileNotFoundError as exc:
        print(f"analysis.report: error: {exc}", file=sys.stderr)
        return 2
    out = (
        Path(args.out)
        if args.out
        else (Path(args.paths[0]) / "report" if len(args.paths) == 1 else Path("report"))
    )
    print(format_table([summarize(run) for run in runs]))
    missing = [run for run in runs if not (run / "config.yaml").exists()]
    if missing:  # runs not written by the trainer (or pruned): curves only, no variants
        written = plot_runs(runs, out)
        print(f"\nno config.yaml in {missing[0]}: no per-variant table")
    else:
        variants = load_study(runs)
        names = [v.name for v in variants]
        try:
            if args.reference is not None:
                reference = find_variant(variants, args.reference)
            else:
                reference = (
                    find_variant(variants, DEFAULT_REFERENCE) if DEFAULT_REFERENCE in names else variants[0]
                )
        except ValueError as exc:
            print(f"analysis.report: error: {exc}", file=sys.stderr)
            return 2
        groups = {v.name: [t.run_dir for t in v.trials] for v in variants}
        written = plot_groups(groups, out, [*METRICS, *downstream_metrics(variants)])
        print()
        print(render_text(VARIANT_HEADER, variant_rows(variants, reference)))
        if (table := downstream_table(variants)) is not None:
            print(render_text(*table))
        print(*verdicts(variants, reference), sep="\n")
        page = study_markdown(variants, reference, [Path(p.name) for p in written])
        (out / REPORT_FILE).write_text(page)
        print(f"\n{out / REPORT_FILE}")
    print(f"\n{len(written)} plots in {out}: {', '.join(p.name for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
