"""`torch._grouped_mm` on fake tensors in any dtype: the CPU kernel runs an MoE's experts in fp32, but the
op's shape rule (its meta function) accepts bf16 only, so a CPU plan of an MoE model would stop there."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def grouped_mm_output(
    a: torch.Tensor,
    b: torch.Tensor,
    offs: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The output of `torch._grouped_mm(a, b, offs)` (G = len(offs) groups), allocated by the active mode."""
    if a.dim() == 2 and b.dim() == 2:  # groups along K (an expert weight's gradient): one [M, N] per group
        shape = (offs.numel(), a.shape[0], b.shape[1])
    elif a.dim() == 3 and b.dim() == 3:
        shape = (a.shape[0], a.shape[1], b.shape[2])
    else:  # one operand grouped along M: the rows keep their group
        shape = (a.shape[-2], b.shape[-1])
    return torch.empty(shape, dtype=out_dtype or a.dtype, device=a.device)


class AnyDtypeGroupedMM(TorchDispatchMode):
    """Entered inside FakeTensorMode: answers `_grouped_mm` of non-bf16 operands with its output's shape."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func is torch.ops.aten._grouped_mm.default and args[0].dtype != torch.bfloat16:
            return grouped_mm_output(*args, **kwargs)
        return func(*args, **kwargs)
