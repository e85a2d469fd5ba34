"""Results of a sweep as a study: one row per trial, one per variant (mean and std over seeds), and each
variant's difference to a named reference variant, paired by seed.

A trial's variant is what sets it apart from the other trials of the sweep apart from its seed: the keys of
the resolved config.yaml (written by the trainer into each run dir) whose values differ between trials,
minus run.*, wandb.* and launch.*. An attention preset shows as its name (model.variant), not as the fields
it sets. Everything else is read from its metrics.jsonl, parameters and training FLOPs per token from the
`start` row the trainer writes before its first step (a run from before it wrote one shows them as missing).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from train.metrics import METRICS_FILE, read_metrics

IGNORED_PREFIXES = ("run.", "wandb.", "launch.", "hydra.")
PRESET_FIELDS = ("model.attention", "model.pairing", "model.lambda_mode", "model.baseline_head_factor")
"""Set by an attention preset: shown as its model.variant name instead."""

DIAG_COLUMNS = {
    "act_ratio": "diag/act_ratio/max",
    "qk_logit_max": "diag/qk_logit_max/max",
    "context_rms": "diag/context_rms/mean",
    "context_rms_min": "diag/context_rms_min/min",
    "sink_mass": "diag/sink_mass/mean",
    "sink_mass_max": "diag/sink_mass_max/max",
}
"""Study column -> the overall diagnostic it reads from the run's last diagnostics row."""

DOWNSTREAM_PREFIX = "downstream/"
"""Keys of the downstream task scores logged during training (metrics named after their task)."""

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
"""Two-sided 95% Student t quantiles by degrees of freedom (1.96 beyond): a 3-seed mean is noisy."""


@dataclass
class TrialResult:
    """One run of a study."""

    run_dir: Path
    seed: int
    config: dict[str, object]
    """The run's resolved config, flattened to dotted keys."""
    variant: str = ""
    """Filled by load_study: what sets this trial apart, seed aside."""
    metrics: dict[str, float | None] = field(default_factory=dict)
    """val_loss, params, flops_per_token, tokens, loss_spikes, grad_spikes and the DIAG_COLUMNS."""
    curves: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    """Per-step series for the plots: name -> (steps, values)."""


@dataclass
class VariantResult:
    """The trials of one variant, over seeds."""

    name: str
    trials: list[TrialResult]

    def values(self, metric: str) -> list[float]:
        return [v for t in self.trials if (v := t.metrics.get(metric)) is not None and math.isfinite(v)]

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.fmean(values) if values else None

    def std(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.stdev(values) if len(values) > 1 else None


@dataclass
class Difference:
    """variant - reference of one metric over the seeds both ran (paired: same seed, same data order)."""

    mean: float
    std: float | None
    """Std of the per-seed differences (None with one seed)."""
    n: int
    """Seeds in both."""

    @property
    def half_width(self) -> float | None:
        """Half-width of the 95% confidence interval of the mean difference (t-distribution over seeds)."""
        if self.std is None:
            return None
        return T_975.get(self.n - 1, 1.96) * self.std / math.sqrt(self.n)

    @property
    def beyond_noise(self) -> bool:
        """Whether the 95% interval excludes 0: the difference is larger than the seeds' noise."""
        hw = self.half_width
        return hw is not None and abs(self.mean) > hw


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _last(records: Sequence[dict], key: str) -> float | None:
    for rec in reversed(records):
        value = rec.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def curve(records: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one key over the step rows (and diagnostics / val rows) of a metrics.jsonl."""
    steps, values = [], []
    for rec in records:
        value = rec.get(key)
        if rec.get("event") is None and isinstance(value, int | float) and not isinstance(value, bool):
            steps.append(float(rec["step"]))
            values.append(float(value))
    return steps, values


CURVES = {
    "loss": "loss",
    "val_loss": "val_loss",
    "grad_norm": "grad_norm",
    "loss_spikes": "loss_spikes",
    "grad_spikes": "grad_spikes",
    "lambda_mean": "diag/lambda_mean/mean",
    **DIAG_COLUMNS,
}
"""Plot name -> metrics.jsonl key."""


def load_trial(run_dir: Path) -> TrialResult:
    """A run dir's config and metrics (the run may still be going: then its last rows count)."""
    import yaml

    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path}: missing (the trainer writes it when a run starts)")
    config = _flatten(yaml.safe_load(config_path.read_text()))
    records = read_metrics(run_dir / METRICS_FILE)
    end = next((r for r in reversed(records) if r.get("event") == "end"), {})
    start = [r for r in records if r.get("event") == "start"]
    metrics: dict[str, float | None] = {
        "val_loss": _last(records, "val_loss"),
        "params": _last(start, "params"),
        "flops_per_token": _last(start, "flops_per_token"),
        "tokens": _last([end], "tokens_seen") or _last(records, "tokens_seen"),
        "loss_spikes": _last([end], "loss_spikes") or _last(records, "loss_spikes"),
        "grad_spikes": _last([end], "grad_spikes") or _last(records, "grad_spikes"),
        "steps": _last(records, "step"),
    }
    metrics |= {name: _last(records, key) for name, key in DIAG_COLUMNS.items()}
    # trainer.downstream_tasks: downstream/<task>/<metric>, the last score (train/downstream.py)
    downstream = sorted({k for r in records for k in r if k.startswith(DOWNSTREAM_PREFIX)})
    metrics |= {key: _last(records, key) for key in downstream}
    curves = {name: curve(records, key) for name, key in CURVES.items()}
    curves |= {key: curve(records, key) for key in downstream}
    return TrialResult(run_dir, int(config.get("run.seed", 0)), config, metrics=metrics, curves=curves)


def variant_names(trials: Sequence[TrialResult]) -> list[str]:
    """Each trial's variant label: the values of the keys that differ between trials, seed and run aside."""
    keys = sorted({k for t in trials for k in t.config})
    differing = [
        k
        for k in keys
        if not k.startswith(IGNORED_PREFIXES) and len({repr(t.config.get(k)) for t in trials}) > 1
    ]
    if "model.variant" in differing:
        differing = [k for k in differing if k not in PRESET_FIELDS]
    names = []
    for t in trials:
        parts = [f"{k.rsplit('.', 1)[-1]}={t.config.get(k)}" for k in differing if k != "model.variant"]
        if "model.variant" in differing:
            parts.insert(0, str(t.config["model.variant"]))
        names.append(" ".join(parts) or str(t.config.get("model.variant", t.run_dir.name)))
    return names


def load_study(run_dirs: Sequence[Path]) -> list[VariantResult]:
    """Trials grouped into variants, in the order their first trial appears (sweep order)."""
    trials = [load_trial(d) for d in run_dirs]
    for trial, name in zip(trials, variant_names(trials), strict=True):
        trial.variant = name
    groups: dict[str, list[TrialResult]] = {}
    for trial in trials:
        groups.setdefault(trial.variant, []).append(trial)
    return [VariantResult(name, sorted(ts, key=lambda t: t.seed)) for name, ts in groups.items()]


def difference(
    variant: VariantResult, reference: VariantResult, metric: str = "val_loss"
) -> Difference | None:
    """variant - reference, paired by seed; None when they share no seed with a value."""
    ref = {t.seed: t.metrics.get(metric) for t in reference.trials}
    diffs = [
        v - r
        for t in variant.trials
        if (v := t.metrics.get(metric)) is not None and (r := ref.get(t.seed)) is not None
    ]
    if not diffs:
        return None
    std = statistics.stdev(diffs) if len(diffs) > 1 else None
    return Difference(statistics.fmean(diffs), std, len(diffs))


def find_variant(variants: Sequence[VariantResult], name: str) -> VariantResult:
    for v in variants:
        if v.name == name:
            return v
    raise ValueError(
        f"reference variant {name!r} is not in this study; its variants: {[v.name for v in variants]}"
    )
