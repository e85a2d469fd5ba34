"""The planner against measurement: planned peak memory of real CPU jobs (1 and 2 ranks, with and without
activation checkpointing) within a stated tolerance of the measured one, through `python -m bench.plan`
(see its docstring for what is measured: peak RSS above a floor job's)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("data_root")]

TOLERANCE = (0.4, 1.3)
"""planned / measured: the tracer counts tensors only; the measured RSS adds the allocator's slack and what
torch holds outside tensors (autograd graph, gloo buffers, rank 0's full-model init copy). Measured with
`python -m bench.plan` on a loaded 2-core machine: 0.60 (1 rank), 0.46 (1 rank, full), 0.69 (2 ranks FSDP):
the RSS sits 0.11-0.19 GiB above the plan in every case, an offset the tiny CPU model makes look large."""


def test_planned_peak_memory_is_within_tolerance_of_the_measured_peak(tmp_path, jobs):
    out = tmp_path / "plan.json"
    cases = ["1rank", "1rank-full", "2rank-fsdp"]
    command = [sys.executable, "-m", "bench.plan", "--steps", "2", "--json", str(out), "--cases", *cases]
    proc = subprocess.run(command, cwd=jobs.repo, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = {r["case"]: r for r in json.loads(out.read_text())}
    assert sorted(results) == sorted(cases)
    for case, r in results.items():
        assert TOLERANCE[0] <= r["ratio"] <= TOLERANCE[1], (case, r)
    # checkpointing every block keeps less, in the plan and in the measurement
    assert results["1rank-full"]["measured_gib"] < results["1rank"]["measured_gib"]
    assert results["1rank-full"]["planned_gib"] < results["1rank"]["planned_gib"]
    assert "plan/meas" in proc.stdout
