"""The planner against measurement: planned peak memory of real CPU jobs (1 and 2 ranks, with and without
activation checkpointing, tensor parallel, an MoE model under expert parallel) within a stated tolerance of
the measured one, through `python -m bench.plan` (see its docstring for what is measured: peak RSS above a
floor job's, with glibc's mmap threshold fixed so that the RSS follows the live tensors)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("data_root")]

TOLERANCE = (0.85, 1.1)
"""planned / measured. The planner counts tensors only, and matches torch's MemTracker on the real tensors of
a CPU step to the byte; the measurement adds what a job holds beyond the floor job in small heap blocks
(tensors under the 64 KiB mmap threshold, autograd nodes, gloo and DTensor bookkeeping): 0.00-0.01 GiB here.
Measured with `OMP_NUM_THREADS=1 python -m bench.plan --steps 3` on a 2-core machine: 0.97-1.02 over all
eleven cases (README); 0.92-1.01 before file-backed pages (mapped code) were taken off the measured peak.
Without the fixed threshold glibc keeps freed tensors resident and the same cases measure 0.43-0.79."""
NOISE_GIB = 0.03
"""What the measurement varies by between identical jobs on different machines, whatever the case's size (heap
blocks, thread arenas, mapped code): CI once measured 1rank-full 0.014 GiB above this machine's figure, 0.84
of the plan, before the file-backed pages were taken off. A case within NOISE_GIB of its plan passes whatever
the ratio; 1rank-full (0.13 GiB) needs it, the others are large enough for the ratio alone."""


def _within_tolerance(planned: float, measured: float) -> bool:
    ratio_ok = TOLERANCE[0] <= planned / measured <= TOLERANCE[1]
    return ratio_ok or abs(planned - measured) <= NOISE_GIB


def test_planned_peak_memory_is_within_tolerance_of_the_measured_peak(tmp_path, jobs):
    out = tmp_path / "plan.json"
    cases = ["1rank", "1rank-full", "2rank-tp", "2rank-ep"]
    command = [sys.executable, "-m", "bench.plan", "--steps", "2", "--json", str(out), "--cases", *cases]
    proc = subprocess.run(command, cwd=jobs.repo, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = {r["case"]: r for r in json.loads(out.read_text())}
    assert sorted(results) == sorted(cases)
    for case, r in results.items():
        assert _within_tolerance(r["planned_gib"], r["measured_gib"]), (case, r)
    # checkpointing every block keeps less, in the plan and in the measurement
    assert results["1rank-full"]["measured_gib"] < results["1rank"]["measured_gib"]
    assert results["1rank-full"]["planned_gib"] < results["1rank"]["planned_gib"]
    assert "plan/meas" in proc.stdout
