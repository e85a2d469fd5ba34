"""Tokens/s, MFU and peak memory: what a step costs on this hardware."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

# Dense bf16 tensor-core peak per device, in FLOP/s (vendor datasheets, SXM parts, no sparsity).
PEAK_BF16_FLOPS = {
    "B200": 2.25e15,
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
}


def peak_flops(device: torch.device, override_tflops: float) -> float | None:
    """Per-device peak FLOP/s: trainer.peak_tflops when set, else from the device name; None when unknown."""
    if override_tflops > 0:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in name:
            return flops
    return None


def mfu(flops_per_token: float, tokens_per_s_per_device: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the device's peak (None without a peak)."""
    if peak is None:
        return None
    return flops_per_token * tokens_per_s_per_device / peak


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated device memory (CUDA), or on CPU the process's peak resident set, in GiB.

    On Linux the file-backed pages resident now are taken off the peak (VmHWM): they are mapped files (the
    libraries' code, memory-mapped token shards), shared through the page cache, not memory the step
    allocated, and their count grows with the code paths a job runs and the shards it has read (full
    checkpointing maps ~4 MiB more code than none). The step's allocations peak every step, so the file pages
    resident at the end were resident at a peak too."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    status = _proc_status_kib()
    if "VmHWM" in status and "RssFile" in status:
        return (status["VmHWM"] - status["RssFile"]) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux, bytes on macOS.
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def _proc_status_kib() -> dict[str, int]:
    """The kB fields of /proc/self/status (empty where there is no /proc)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in lines if line.endswith(" kB"))
    return {name: int(value.split()[0]) for name, value in fields}
