"""The lr_stability study as a page section: loss and grad-norm spikes per learning rate per attention variant
(mean ± std over seeds), the grad-norm and loss curves per learning rate, and a plain conclusion.

A trial's group is (model.variant, optim.lr); its seeds are the repeats. The conclusion compares DIFF V2 with
the baseline at each learning rate, paired by seed (analysis/study.py's Difference: mean of the per-seed
differences and the half-width of its 95% t-interval): a difference counts only beyond that interval.

The attention output scale at init per variant is a measurement that builds models, so it is not made here:
`python -m model.init_scale --out <sweep>/init_scale.json <sweep>/*/config.yaml` records it and this section
reads that file when the sweep dir holds one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from analysis.report import METRICS, plot_groups
from analysis.runs import find_runs
from analysis.study import TrialResult, VariantResult, difference, load_study
from analysis.tables import render_markdown

SPIKES = (("loss_spikes", "loss spikes"), ("grad_spikes", "grad-norm spikes"))
CURVE_METRICS = tuple(m for m in METRICS if m.name in ("grad_norm", "loss"))
REFERENCE, CHALLENGER = "baseline", "diff_v2"
"""The claim under test: DIFF V2 has fewer spikes than the baseline at large learning rates."""
INIT_SCALE_FILE = "init_scale.json"
"""What `python -m model.init_scale` wrote into the sweep dir: variant -> attention / embedding RMS."""


def _cell(v: VariantResult | None, metric: str, fmt: str) -> str:
    if v is None or v.mean(metric) is None:
        return "-"
    std = v.std(metric)
    return f"{v.mean(metric):{fmt}}" + (f" ± {std:{fmt}}" if std is not None else "")


def by_lr_and_variant(trials: Sequence[TrialResult]) -> dict[float, dict[str, VariantResult]]:
    """lr -> attention variant -> its trials over seeds, in sweep order of variants, LRs ascending."""
    groups: dict[float, dict[str, list[TrialResult]]] = {}
    for t in trials:
        lr, name = float(t.config["optim.lr"]), str(t.config["model.variant"])
        groups.setdefault(lr, {}).setdefault(name, []).append(t)
    return {
        lr: {name: VariantResult(name, sorted(ts, key=lambda t: t.seed)) for name, ts in groups[lr].items()}
        for lr in sorted(groups)
    }


def spike_table(grid: dict[float, dict[str, VariantResult]]) -> str:
    """One row per LR; per variant its loss spikes, grad-norm spikes and final val loss (mean ± std)."""
    names = list(dict.fromkeys(name for row in grid.values() for name in row))
    header = ["lr", "seeds"] + [f"{n}: {label}" for n in names for _, label in SPIKES]
    header += [f"{n}: val loss" for n in names]
    rows = []
    for lr, row in grid.items():
        seeds = sorted({t.seed for v in row.values() for t in v.trials})
        cells = [f"{lr:g}", ",".join(map(str, seeds))]
        cells += [_cell(row.get(n), metric, ".1f") for n in names for metric, _ in SPIKES]
        cells += [_cell(row.get(n), "val_loss", ".3f") for n in names]
        rows.append(cells)
    return render_markdown(header, rows)


def conclusion(grid: dict[float, dict[str, VariantResult]]) -> list[str]:
    """Per LR, DIFF V2 - baseline spikes (paired by seed) and whether that is beyond the seeds' noise."""
    lines, fewer, more = [], [], []
    for lr, row in grid.items():
        if REFERENCE not in row or CHALLENGER not in row:
            continue
        parts = []
        for metric, label in SPIKES:
            d = difference(row[CHALLENGER], row[REFERENCE], metric)
            if d is None:
                continue
            hw = d.half_width
            noise = "n/a (1 seed)" if hw is None else ("beyond noise" if d.beyond_noise else "within noise")
            interval = f" ± {hw:.1f}" if hw is not None else ""
            parts.append(f"{label} {d.mean:+.1f}{interval} ({noise})")
            if d.beyond_noise:
                (fewer if d.mean < 0 else more).append(f"{label} at lr {lr:g}")
        lines.append(f"lr {lr:g}: {CHALLENGER} − {REFERENCE}: " + "; ".join(parts))
    if fewer and not more:
        verdict = f"{CHALLENGER} has fewer spikes than {REFERENCE} beyond noise: " + ", ".join(fewer) + "."
    elif more and not fewer:
        verdict = f"{CHALLENGER} has more spikes than {REFERENCE} beyond noise: " + ", ".join(more) + "."
    elif fewer and more:
        verdict = f"mixed: fewer {', '.join(fewer)}; more {', '.join(more)}."
    else:
        verdict = (
            f"at this scale no learning rate separates {CHALLENGER} from {REFERENCE} in spike counts beyond "
            "the seeds' noise: the claim is neither confirmed nor refuted here."
        )
    return [*lines, f"**Conclusion:** {verdict}"]


def init_scale_part(recorded: Path) -> list[str]:
    """The init-scale paragraph from model.init_scale's JSON (and a blank line); none if not recorded."""
    if not recorded.exists():
        return []
    measured = json.loads(recorded.read_text())
    parts = [f"{name} {m['attention_rms']:.4f}" for name, m in measured.items()]
    embedding = next(iter(measured.values()))["embedding_rms"]
    note = (
        "**DIFF V1 at init.** Attention output RMS (after o_proj, mean over layers, seed 0): "
        f"{', '.join(parts)}; token embedding RMS {embedding:.4f}."
    )
    if "diff_v1" in measured and "baseline" in measured:
        ratio = measured["diff_v1"]["attention_rms"] / measured["baseline"]["attention_rms"]
        note += (
            f" DIFF V1's is {ratio:.0f}x the baseline's: its per-head RMSNorm (weight 1 at init) rescales"
            " each head's output to RMS ~1 before the (1 - lambda_init) factor and o_proj, where the"
            " baseline's head outputs an average of small values. The sources initialise that norm the"
            " same way (unilm Diff-Transformer/rms_norm.py: weight = ones; multihead_flashdiff_*.py: subln,"
            " then `* (1 - lambda_init)`, out_proj an nn.Linear with no init of its own; neither that code"
            " nor the paper's facts in the model spec give another init for the sub-norm or the output),"
            " so this framework's V1 keeps it and offers no option; what it costs at this scale shows in"
            " V1's curves below."
        )
    return [note, ""]


def stability_section(sweep_dir: Path, out_dir: Path, page_dir: Path) -> str:
    """The section's markdown; per-LR PNGs go to <out_dir>/<sweep name>/lr_<lr>/, linked from page_dir."""
    trials = [t for v in load_study(find_runs([sweep_dir])) for t in v.trials]
    grid = by_lr_and_variant(trials)
    plots = []
    for lr, row in grid.items():
        groups = {name: [t.run_dir for t in v.trials] for name, v in row.items()}
        written = plot_groups(groups, out_dir / sweep_dir.name / f"lr_{lr:g}", CURVE_METRICS)
        plots += [(lr, p.relative_to(page_dir)) for p in written]
    steps = {int(t.metrics["steps"] or 0) for t in trials}
    parts = [
        f"## {sweep_dir.name}",
        "",
        f"{len(trials)} runs: attention variants × lr × seeds, {'/'.join(map(str, sorted(steps)))} steps, "
        "every step logged. Spikes per run (train/spikes.py), mean ± std over seeds:",
        "",
        spike_table(grid),
        "",
        *(f"- {line}" for line in conclusion(grid)),
        "",
        *init_scale_part(sweep_dir / INIT_SCALE_FILE),
        *(f"![lr {lr:g} {p.stem}]({p.as_posix()})" for lr, p in plots),
    ]
    return "\n".join(parts) + "\n"
