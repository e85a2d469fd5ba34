"""`python -m analysis.results --out docs/results.md <sweep dir> [<sweep dir> ...]`: a page of studies.

For each sweep dir (a study: its name is the dir's name), the verdict per variant against the reference
(default diff_v2), the per-variant and per-trial tables of analysis.report and its PNGs (a band over seeds),
written to <out dir>/results/<study>/. The setup (size, tokens, LR, seeds) is read from the trials' configs,
so the page says what was run; `make results` reruns the CPU study and this.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from analysis.report import DEFAULT_REFERENCE, METRICS, downstream_metrics, plot_groups, study_markdown
from analysis.runs import find_runs
from analysis.stability import stability_section
from analysis.study import VariantResult, find_variant, load_study
from analysis.tables import seeds_of

SETUP_KEYS = (
    ("model.name", "size"),
    ("model.d_model", "D"),
    ("model.n_layers", "layers"),
    ("model.n_heads", "h"),
    ("model.n_kv_heads", "h_kv"),
    ("model.head_dim", "d"),
    ("data.name", "data"),
    ("trainer.seq_len", "seq_len"),
    ("trainer.global_batch_tokens", "tokens/step"),
    ("trainer.max_steps", "steps"),
    ("optim.lr", "lr"),
    ("optim.schedule", "schedule"),
    ("optim.warmup_steps", "warmup"),
)


def setup_line(variants: Sequence[VariantResult]) -> str:
    """The settings every trial shares, from the first trial's config, and the seeds."""
    trials = [t for v in variants for t in v.trials]
    config = trials[0].config
    shared = [
        f"{label} {config.get(key)}"
        for key, label in SETUP_KEYS
        if len({repr(t.config.get(key)) for t in trials}) == 1
    ]
    tokens = trials[0].metrics.get("tokens")
    if tokens:
        shared.append(f"{tokens / 1e6:.2f}M tokens per run")
    return f"{len(trials)} runs; seeds {seeds_of(trials)}; " + ", ".join(shared) + "."


def study_section(sweep_dir: Path, out_dir: Path, page_dir: Path, reference: str) -> str:
    """One study's markdown; its PNGs go to <out_dir>/<study>/, linked relative to page_dir."""
    variants = load_study(find_runs([sweep_dir]))
    ref = find_variant(variants, reference if reference in [v.name for v in variants] else variants[0].name)
    plots_dir = out_dir / sweep_dir.name
    groups = {v.name: [t.run_dir for t in v.trials] for v in variants}
    written = plot_groups(groups, plots_dir, [*METRICS, *downstream_metrics(variants)])
    links = [p.relative_to(page_dir) for p in written]
    return f"## {sweep_dir.name}\n\n{setup_line(variants)}\n\n" + study_markdown(variants, ref, links)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.results", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="*", help="sweep dirs, one per study (e.g. runs/results/ablations)")
    parser.add_argument(
        "--out", default="docs/results.md", help="the page (its PNGs go beside it, in results/)"
    )
    parser.add_argument("--reference", default=DEFAULT_REFERENCE, help="variant the others are compared to")
    parser.add_argument("--intro", help="a markdown file put above the studies (setup, commands, caveats)")
    parser.add_argument(
        "--stability",
        nargs="*",
        default=[],
        help="lr_stability sweep dirs: spikes per LR and variant, grad-norm curves per LR",
    )
    args = parser.parse_args(argv)
    page = Path(args.out)
    page.parent.mkdir(parents=True, exist_ok=True)
    parts = [Path(args.intro).read_text().rstrip() + "\n"] if args.intro else []
    try:
        for sweep in args.sweeps:
            parts.append(study_section(Path(sweep), page.parent / "results", page.parent, args.reference))
        for sweep in args.stability:
            parts.append(stability_section(Path(sweep), page.parent / "results", page.parent))
    except (FileNotFoundError, ValueError) as exc:
        print(f"analysis.results: error: {exc}", file=sys.stderr)
        return 2
    page.write_text("\n".join(parts))
    studies = len(args.sweeps) + len(args.stability)
    print(f"wrote {page} ({studies} studies, plots in {page.parent / 'results'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
