"""`python -m data.prepare` and `python -m train` with a two-source mixture and document-aware attention."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conf import compose_run_config

pytestmark = [pytest.mark.slow]


def test_mixture_with_document_mask_trains_resumes_and_logs_tokens_per_source(
    jobs, data_root: Path, tmp_path: Path
):
    shared_bpe = data_root / "stdlib_small-bpe2048" / "tokenizer"
    subprocess.run(
        [sys.executable, "-m", "data.prepare", "data=stdlib_small", "data.name=second",
         "data.source.max_docs=40", "data.num_workers=1", f"data.tokenizer.path={shared_bpe}"],
        cwd=jobs.repo, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    mixture = (
        f"++data.mixture={{small:{{dir:{data_root}/stdlib_small-bpe2048,weight:3}},"
        f"second:{{dir:{data_root}/second-bpe2048,weight:1}}}}"
    )
    run = tmp_path / "run"
    args = (mixture, "model.doc_mask=true", "model.doc_positions=true", "trainer.max_steps=3",
            "trainer.eval_interval=0", "trainer.diag_interval=0", "checkpoint.interval=0")  # fmt: skip
    jobs.train(run, *args, "trainer.stop_at_step=2")  # checkpoints the mixture's cursor at step 2
    jobs.train(run, *args)  # resumes from it
    rows = jobs.train_rows(run)
    # 4 windows of 32 tokens per step, 3:1 by weight over each block of 4096 windows
    assert rows[3]["data/small/tokens"] + rows[3]["data/second/tokens"] == 3 * 128
    assert rows[3]["data/second/epochs"] > 0 and rows[3]["data/small/epochs"] > 0
    exported = json.loads((run / "model_config.json").read_text())
    assert exported["doc_mask"] and exported["doc_positions"] and exported["eot_token"] == 2047


def test_the_mixture_config_group_composes_two_sources_with_weights():
    cfg = compose_run_config(["data=mixture"])  # composed and validated as `python -m train` does
    mixture = cfg.data.mixture
    assert sorted(mixture) == ["stdlib", "stdlib_small"]
    assert (mixture["stdlib"].weight, mixture["stdlib_small"].weight) == (0.7, 0.3)
    assert mixture["stdlib"].dir.endswith("stdlib-bpe8192")
