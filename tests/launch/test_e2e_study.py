"""The ablations recipe end to end at smoke size: `python -m launch --multirun +experiment=ablations`, two
seeds of two of its variants, then `analysis.report` with its per-variant table against diff_v2."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.report import main as report_main

pytestmark = pytest.mark.slow


def test_ablations_recipe_runs_over_seeds_and_reports_each_variant_against_diff_v2(
    data_env, tmp_path: Path, tiny, run_launch, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep_dir = tmp_path / "ablations"
    args = [
        "--multirun",
        "+experiment=ablations",
        *tiny,
        "trainer.max_steps=2",
        "trainer.diag_interval=2",
        "run.seed=0,1",
        "attention=diff_v2,diff_v2_no_lambda",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    proc = run_launch(args, data_env, tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert trials == [
        "0-seed-0_attention-diff_v2",
        "1-seed-0_attention-diff_v2_no_lambda",
        "2-seed-1_attention-diff_v2",
        "3-seed-1_attention-diff_v2_no_lambda",
    ]
    capsys.readouterr()
    assert report_main([str(sweep_dir), "--out", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    lines = [line.split() for line in printed.splitlines()]
    # variant rows (trial rows start with the trial number): name, seeds, val loss ± std, Δ ± interval, ...
    rows = {c[0]: c for c in lines if len(c) > 5 and c[1] == "2" and not c[0][0].isdigit()}
    assert set(rows) == {"diff_v2", "diff_v2_no_lambda"}  # one row per variant, 2 seeds each
    assert "(reference)" in rows["diff_v2"]
    assert rows["diff_v2_no_lambda"][5].startswith(("+", "-"))  # Δ val vs diff_v2
    assert "diff_v2 vs diff_v2_no_lambda: diff_v2's val loss is" in printed
    page = (tmp_path / "report" / "report.md").read_text()
    assert "| diff_v2_no_lambda | 2 |" in page and "![context_rms](context_rms.png)" in page
