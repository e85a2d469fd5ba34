"""The CPU peak memory a run logs (`peak_mem_gb`): what the process allocated at its peak, not the library
code and files it has mapped, whose resident pages vary between identical jobs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

MIB = 2**20
FILE_MIB, ALLOC_MIB = 512, 256
"""The file is larger than what importing torch leaves between the peak and the current resident set."""

PROBE = textwrap.dedent(
    """
    import mmap, sys
    import torch
    from train.throughput import peak_memory_gb

    def peaks():  # MiB: the logged peak, and the raw peak resident set (VmHWM; ru_maxrss of a forked child
        # starts at its parent's)
        hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
        return peak_memory_gb(torch.device("cpu")) * 1024, int(hwm.split()[1]) / 1024

    start = peaks()
    with open(sys.argv[1], "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        touched = sum(mapped[i] for i in range(0, len(mapped), mmap.PAGESIZE))  # every page resident
        after_file = peaks()
        block = torch.ones(int(sys.argv[2]) * 2**20 // 4)  # an allocation, as a step's tensors are
        after_alloc = peaks()
    print(*start, *after_file, *after_alloc)
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
def test_cpu_peak_memory_counts_allocations_but_not_mapped_file_pages(tmp_path):
    data = tmp_path / "mapped.bin"
    data.write_bytes(b"\x01" * (FILE_MIB * MIB))
    # Through a shell that forks: a process forked from pytest starts its ru_maxrss at pytest's peak (Linux
    # keeps it across exec), which would hide what the probe maps; the shell's child starts from the shell's.
    probe = ["sh", "-c", '"$0" -c "$1" "$2" "$3"; exit $?', sys.executable, PROBE, str(data), str(ALLOC_MIB)]
    out = subprocess.run(probe, capture_output=True, text=True, check=True).stdout
    peak0, rss0, peak1, rss1, peak2, _ = map(float, out.split())  # MiB
    assert rss1 - rss0 > 0.5 * FILE_MIB  # the mapped file is resident: the raw peak RSS counts it
    assert peak1 - peak0 < 0.1 * FILE_MIB  # the logged peak does not
    assert peak2 - peak1 > 0.9 * ALLOC_MIB  # an allocation is counted in full
