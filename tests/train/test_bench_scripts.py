"""The benchmarks bench/gpu.sh runs on a lent GPU work here first: throughput through `python -m train`, and
the checkpoint timings through the framework's Checkpointer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("data_root")]

SMALL_STEPS = ["trainer.seq_len=32", "trainer.micro_batch=2", "trainer.global_batch_tokens=64"]


def test_throughput_bench_measures_each_variant_without_checkpoints(tmp_path, jobs):
    out = tmp_path / "throughput.json"
    command = [sys.executable, "-m", "bench.throughput", "--steps", "3", "--json", str(out)]
    command += ["--keep", str(tmp_path / "runs"), *jobs.tiny_model, *SMALL_STEPS]
    proc = subprocess.run(command, cwd=jobs.repo, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    baseline, diff_v2 = json.loads(out.read_text())
    assert (baseline["attention"], diff_v2["attention"]) == ("baseline", "diff_v2")
    assert diff_v2["params"] > baseline["params"]  # 2h query heads and lambda_proj
    assert diff_v2["flops_per_token"] > baseline["flops_per_token"]
    for m in (baseline, diff_v2):
        assert m["error"] is None and m["tokens_per_s"] > 0 and m["peak_mem_gb"] > 0
    assert "vs baseline" in proc.stdout and "diff_v2" in proc.stdout
    run_dirs = sorted(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert len(run_dirs) == 2
    for run_dir in run_dirs:  # checkpoint.enabled=false: the runs wrote metrics and nothing else
        assert (run_dir / "metrics.jsonl").exists()
        assert not list(run_dir.glob("checkpoints/step_*")) and not (run_dir / "model.safetensors").exists()


def test_checkpoint_bench_times_blocking_async_and_load(jobs):
    command = [sys.executable, "-m", "bench.checkpoint", *jobs.tiny_model, "trainer.seq_len=32"]
    proc = subprocess.run(command, cwd=jobs.repo, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    figures = dict(line.split(":", 1) for line in proc.stdout.splitlines() if ":" in line)
    ratio = "ratio async wait / blocking wait"
    assert {"blocking save", "async save", "load (resume)", ratio} <= set(figures)
    assert float(figures[ratio].split()[0]) > 0
    verified = "ratio verified / unverified resume"
    assert {"checksums at save", "resume verified", verified} <= set(figures)
    assert float(figures[verified].split()[0]) >= 1.0


def test_parallel_bench_counts_the_collectives_the_shapes_predict(tmp_path, jobs):
    """FSDP 2 and TP 2 on gloo: the all-gathers and reduce-scatters of one step, counted by CommDebugMode,
    are as many and as large as the model's shapes say; both layouts report tokens/s."""
    out = tmp_path / "parallel.json"
    command = [sys.executable, "-m", "bench.parallel", "--layouts", "fsdp2", "tp2", "--steps", "2"]
    command += ["--json", str(out), *jobs.tiny_model, "trainer.seq_len=32", "trainer.micro_batch=2"]
    command += ["trainer.global_batch_tokens=128"]
    proc = subprocess.run(command, cwd=jobs.repo, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert sorted(results) == ["fsdp2", "tp2"]
    for layout in results.values():
        for kind in ("all_gather", "reduce_scatter"):
            calls, volume = layout["expected"][kind]
            assert layout["calls"][kind] == calls, (layout["dims"], kind)
            assert layout["bytes"][kind] == pytest.approx(volume, rel=0.02), (layout["dims"], kind)
        assert layout["tokens_per_s"] > 0
    assert "TP / DP" in proc.stdout


def test_loss_bench_compares_the_chunked_loss_with_whole_logits_in_one_run(jobs):
    command = [sys.executable, "-m", "bench.loss", "--shapes", "tiny", "--chunks", "1024", "--repeats", "1"]
    proc = subprocess.run(command, cwd=jobs.repo, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = [
        line.split() for line in proc.stdout.splitlines() if line.strip().startswith(("0 (whole)", "1024"))
    ]
    whole, chunked = rows
    assert float(whole[-1]) == 1.0 and float(whole[-3]) == 1.0  # the baseline's own ratios
    assert float(chunked[-1]) < 0.5  # peak memory: one chunk of logits instead of all 4096 tokens'


def test_moe_bench_times_grouped_and_loop_experts_against_the_dense_twin(jobs):
    command = [sys.executable, "-m", "bench.moe", "--repeats", "1", "--warmup", "0", "--batch", "2"]
    proc = subprocess.run(
        command + ["--seq-len", "32"], cwd=jobs.repo, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = {line.split("total")[0].strip(): line for line in proc.stdout.splitlines() if "tokens/s" in line}
    assert set(rows) == {"micro (dense)", "micro_moe grouped", "micro_moe loop"}
    assert rows["micro (dense)"].endswith("1.00x dense")
