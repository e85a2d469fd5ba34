"""The study's tables (per variant and per trial) as plain text or markdown, and one verdict line per variant.

Columns: final validation loss (mean ± std over seeds), its difference to the reference variant (mean over
seeds, paired by seed, ± the half-width of its 95% interval, and whether that interval excludes 0),
parameters, training FLOPs per token, tokens, loss and grad-norm spikes, the largest activation outlier
(max|x| / RMS(x) at block outputs), the largest qk logit, context RMS relative to the values read (mean over
heads and layers, and the smallest head) and the attention-sink mass (mean and most sink-like map).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from analysis.study import DOWNSTREAM_PREFIX, Difference, TrialResult, VariantResult, difference

Row = list[str]


def _num(value: float | None, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def _si(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def _mean_std(v: VariantResult, metric: str, fmt: str) -> str:
    mean, std = v.mean(metric), v.std(metric)
    return _num(mean, fmt) + (f" ± {std:{fmt}}" if std is not None else "")


def _diff(d: Difference | None, is_reference: bool) -> tuple[str, str]:
    if is_reference:
        return "(reference)", ""
    if d is None:
        return "-", ""
    hw = d.half_width
    text = f"{d.mean:+.4f}" + (f" ± {hw:.4f}" if hw is not None else "")
    return text, ("yes" if d.beyond_noise else "no") if hw is not None else "n/a (1 seed)"


VARIANT_HEADER = [
    "variant",
    "seeds",
    "val loss",
    "Δ val vs ref",
    "beyond noise",
    "params",
    "active",
    "FLOPs/token",
    "tokens",
    "spikes loss/grad",
    "act max/rms",
    "qk max",
    "ctx RMS mean/min",
    "sink mean/max",
]


def variant_rows(variants: Sequence[VariantResult], reference: VariantResult) -> list[Row]:
    rows = []
    for v in variants:
        delta, beyond = _diff(difference(v, reference), v is reference)
        rows.append(
            [
                v.name,
                str(len(v.trials)),
                _mean_std(v, "val_loss", ".4f"),
                delta,
                beyond,
                _si(v.mean("params")),
                _si(v.mean("active_params")),
                _si(v.mean("flops_per_token")),
                _si(v.mean("tokens")),
                *_diagnostic_cells(v.mean, spikes_format=".1f"),
            ]
        )
    return rows


TRIAL_HEADER = [
    "trial",
    "variant",
    "seed",
    "steps",
    "val loss",
    "Δ val vs ref (same seed)",
    "spikes loss/grad",
    "act max/rms",
    "qk max",
    "ctx RMS mean/min",
    "sink mean/max",
]


def trial_rows(variants: Sequence[VariantResult], reference: VariantResult) -> list[Row]:
    ref_loss = {t.seed: t.metrics.get("val_loss") for t in reference.trials}
    rows = []
    for v in variants:
        for t in v.trials:
            m = t.metrics
            loss, ref = m.get("val_loss"), ref_loss.get(t.seed)
            delta = loss - ref if loss is not None and ref is not None and v is not reference else None
            rows.append(
                [
                    t.run_dir.name,
                    v.name,
                    str(t.seed),
                    _num(m.get("steps"), ".0f"),
                    _num(loss, ".4f"),
                    _num(delta, "+.4f"),
                    *_diagnostic_cells(m.get, spikes_format=".0f"),
                ]
            )
    return rows


def _diagnostic_cells(value: Callable[[str], float | None], spikes_format: str) -> list[str]:
    """The spikes, activation, logit, context and sink columns, from a metric's value (a trial's, or a
    variant's mean over seeds)."""
    return [
        f"{_num(value('loss_spikes'), spikes_format)}/{_num(value('grad_spikes'), spikes_format)}",
        _num(value("act_ratio"), ".1f"),
        _num(value("qk_logit_max"), ".1f"),
        f"{_num(value('context_rms'), '.3f')}/{_num(value('context_rms_min'), '.3f')}",
        f"{_num(value('sink_mass'), '.3f')}/{_num(value('sink_mass_max'), '.3f')}",
    ]


def render_text(header: Row, rows: Sequence[Row]) -> str:
    """Columns padded to fit, a dashed rule under the header."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row: Row) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def render_markdown(header: Row, rows: Sequence[Row]) -> str:
    def line(row: Row) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


def verdicts(variants: Sequence[VariantResult], reference: VariantResult) -> list[str]:
    """One plain sentence per variant: is the reference's final val loss lower, and beyond seed noise?"""
    lines = []
    for v in variants:
        if v is reference:
            continue
        d = difference(v, reference)
        if d is None:
            lines.append(f"{v.name}: no seed in common with {reference.name}; nothing to compare.")
            continue
        better = "lower" if d.mean > 0 else "higher"
        hw = d.half_width
        if hw is None:
            noise = "one seed only: seed noise unknown"
        elif d.beyond_noise:
            noise = f"beyond seed noise (95% interval ±{hw:.4f} over {d.n} paired seeds)"
        else:
            noise = f"within seed noise (95% interval ±{hw:.4f} over {d.n} paired seeds)"
        lines.append(
            f"{reference.name} vs {v.name}: {reference.name}'s val loss is {better} by {abs(d.mean):.4f}; "
            f"{noise}."
        )
    return lines


def downstream_keys(variants: Sequence[VariantResult]) -> list[str]:
    """The downstream/<task>/<metric> scores any trial logged (trainer.downstream_tasks)."""
    return sorted(
        {k for v in variants for t in v.trials for k in t.metrics if k.startswith(DOWNSTREAM_PREFIX)}
    )


def downstream_table(variants: Sequence[VariantResult]) -> tuple[Row, list[Row]] | None:
    """(header, rows): per variant the last downstream scores, mean ± std over seeds; None if none logged."""
    keys = downstream_keys(variants)
    if not keys:
        return None
    header = ["variant", *(k[len(DOWNSTREAM_PREFIX) :] for k in keys)]
    return header, [[v.name, *(_mean_std(v, k, ".3f") for k in keys)] for v in variants]


def seeds_of(trials: Sequence[TrialResult]) -> list[int]:
    return sorted({t.seed for t in trials})
