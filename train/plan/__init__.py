"""The dry-run planner: will a run fit on its devices, and how fast would it go, before it is launched.

`python -m train.plan <the overrides of python -m train> --world-size N | --nodes N --gpus-per-node G
--device h100-80gb [--mfu 0.4]` traces one step of the real model and layout on fake tensors under a fake
process group (trace.py), then prints per rank the memory by kind against the device's, the FLOPs and the
step time and tokens/s at the given MFU, and, when it does not fit, which knob helps most (report.py).
`python -m launch` runs it before it starts torchrun.
"""

from train.plan.devices import DEVICES, DeviceSpec, detect_device, find_device
from train.plan.report import Plan, make_plan

__all__ = ["DEVICES", "DeviceSpec", "Plan", "detect_device", "find_device", "make_plan"]
