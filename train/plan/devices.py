"""The devices a plan can target: memory per device and dense bf16 peak FLOP/s (for step time at an MFU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from errors import ConfigError
from train.throughput import PEAK_BF16_FLOPS


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    memory_bytes: int
    """What one device holds (the vendor's figure: 80 GB H100 = 80 GiB of HBM as CUDA reports it)."""
    peak_flops: float | None
    """Dense bf16 FLOP/s; None: unknown (no step time unless --peak-tflops)."""
    gpu: bool = True
    """GPUs train in bf16 (parallel.mixed_precision=auto) and need room for the CUDA context and NCCL."""


GIB = 2**30
DEVICES: dict[str, DeviceSpec] = {
    "a100-40gb": DeviceSpec("A100 40GB", 40 * GIB, PEAK_BF16_FLOPS["A100"]),
    "a100-80gb": DeviceSpec("A100 80GB", 80 * GIB, PEAK_BF16_FLOPS["A100"]),
    "h100-80gb": DeviceSpec("H100 80GB", 80 * GIB, PEAK_BF16_FLOPS["H100"]),
    "h200-141gb": DeviceSpec("H200 141GB", 141 * GIB, PEAK_BF16_FLOPS["H200"]),
    "b200-192gb": DeviceSpec("B200 192GB", 192 * GIB, PEAK_BF16_FLOPS["B200"]),
}
"""Selectable with --device; `cpu` plans for this machine's RAM shared by the ranks of one node."""


def host_cpu(ranks_per_node: int) -> DeviceSpec:
    """This machine's RAM divided among the ranks that share it, as a device (fp32, no peak FLOP/s)."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return DeviceSpec(
        f"CPU ({ram / GIB:.0f} GiB RAM / {ranks_per_node} ranks)", ram // ranks_per_node, None, gpu=False
    )


def find_device(name: str, ranks_per_node: int) -> DeviceSpec:
    """The table's device called `name` (or `cpu`); a ConfigError naming the choices otherwise."""
    if name == "cpu":
        return host_cpu(ranks_per_node)
    if name not in DEVICES:
        raise ConfigError(f"--device {name!r} is not a known device; choose one of {['cpu', *DEVICES]}")
    return DEVICES[name]


def detect_device(ranks_per_node: int) -> DeviceSpec:
    """This machine's first GPU (its name and memory), or its RAM when it has none."""
    import torch

    if not torch.cuda.is_available():
        return host_cpu(ranks_per_node)
    props = torch.cuda.get_device_properties(0)
    peak = next((f for key, f in PEAK_BF16_FLOPS.items() if key in props.name), None)
    return DeviceSpec(props.name, props.total_memory, peak)
