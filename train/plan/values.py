"""The few values a traced step must read: an MoE step's routing counts, under the plan's assumption that the
router balances its load.

Fake tensors have shapes and no values, but an MoE step turns values into shapes: the tokens per expert
(`bincount` of the router's choices) split the slots among the experts (`counts.tolist()`), and under expert
parallel the all-to-all's split sizes come from the counts every rank sends. `BalancedRouting`, a dispatch
mode entered inside FakeTensorMode, keeps a real shadow of every small integer tensor whose value it can
know:
- `bincount` of values it does not know (the router's choices) counts the same slots for every bin: the
  balanced load the router's bias (or auxiliary loss) steers towards, which is what a plan can promise;
  a skewed router holds more on its busiest expert than planned;
- the slots a capacity limit keeps (`nonzero` of a mask it does not know) are all of them: at a balanced
  load none overflows a capacity factor of 1 or more;
- an all-to-all of a known tensor receives what it sent: every rank's balanced counts are alike;
- an op whose tensor inputs are all known computes its shadow on the real values (views, sums, cumsum,
  arange, cat: the index arithmetic of train/expert_parallel.py);
- reading a value it does not know (`.item()` of a loss or a gradient norm) gives 0: the traced step takes
  no branch that allocates on it (the gradient clip scales in place).
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

_SHADOW_NUMEL = 1 << 20
"""The largest integer tensor shadowed (index tensors of a micro-batch's routed slots are far smaller)."""
_NO_VALUES = {torch.ops.aten.empty.memory_format, torch.ops.aten.empty_like.default}
_WRITES_INTO_FIRST = {torch.ops.c10d.alltoall_base_.default}
"""Collectives that fill their first argument (the output) from their second."""


def _integral(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex()) and t.numel() <= _SHADOW_NUMEL


def _zero(dtype: torch.dtype) -> bool | int | float:
    if dtype == torch.bool:
        return False
    return 0.0 if dtype.is_floating_point else 0


def _grouped_mm_output(
    a: torch.Tensor,
    b: torch.Tensor,
    offs: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The output of `torch._grouped_mm` in a dtype its shape rule refuses (fp32: the CPU kernel runs it, the
    meta function knows bf16 only): G = len(offs) groups."""
    if a.dim() == 2 and b.dim() == 2:  # groups along K (the weight gradient): one [M, N] per group
        shape = (offs.numel(), a.shape[0], b.shape[1])
    elif a.dim() == 3 and b.dim() == 3:
        shape = (a.shape[0], a.shape[1], b.shape[2])
    else:  # one operand grouped along M: rows keep their group
        shape = (a.shape[-2], b.shape[-1])
    return torch.empty(shape, dtype=out_dtype or a.dtype, device=a.device)


def _balanced_bincount(slots: torch.Tensor, minlength: int) -> torch.Tensor:
    bins = max(minlength, 1)
    counts = torch.full((bins,), slots.numel() // bins, dtype=torch.int64)
    counts[: slots.numel() % bins] += 1
    return counts


class BalancedRouting(TorchDispatchMode):
    """Real shadows of small integer fake tensors (see the module docstring)."""

    def __init__(self, fake_mode: FakeTensorMode) -> None:
        super().__init__()
        self.fake_mode = fake_mode
        self.known: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def _real(self, x: object) -> object:
        return self.known[x] if isinstance(x, torch.Tensor) else x

    def _fake_of(self, real: torch.Tensor, device: torch.device) -> torch.Tensor:
        """A fake tensor shadowed by `real` (called with the modes off: the fake mode is entered here)."""
        with self.fake_mode:
            out = torch.empty(real.shape, dtype=real.dtype, device=device)
        self.known[out] = real
        return out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        tensors = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]
        if not all(isinstance(t, FakeTensor) for t in tensors):
            return func(*args, **kwargs)  # real tensors (a DeviceMesh's ranks) and DTensors keep their values
        all_known = all(t in self.known for t in tensors)
        if func is torch.ops.aten._local_scalar_dense.default:
            if all_known:
                with _disable_current_modes():
                    return self.known[args[0]].item()
            try:  # FakeTensorMode knows the value of a scalar it made from a constant (AdamW's step)
                return func(*args, **kwargs)
            except DataDependentOutputException:
                return _zero(args[0].dtype)
        if func is torch.ops.aten._grouped_mm.default and args[0].dtype != torch.bfloat16:
            return _grouped_mm_output(*args, **kwargs)
        if func is torch.ops.aten.bincount.default and not all_known:
            minlength = kwargs.get("minlength", args[2] if len(args) > 2 else 0)
            with _disable_current_modes():
                return self._fake_of(_balanced_bincount(args[0], minlength), args[0].device)
        if func is torch.ops.aten.nonzero.default and not all_known:
            # a capacity mask (model.moe_capacity_factor): at a balanced load no expert overflows a
            # capacity of factor >= 1, so every slot is kept (a factor below 1 is planned as if 1)
            with _disable_current_modes():
                return self._fake_of(torch.ones(args[0].shape, dtype=torch.bool).nonzero(), args[0].device)
        out = func(*args, **kwargs)
        if func in _WRITES_INTO_FIRST:
            if args[1] in self.known:
                with _disable_current_modes():
                    self.known[args[0]] = self.known[args[1]].clone()
            return out
        if func._schema.is_mutable and not all_known:
            for t in tensors:  # a known tensor written from unknown values is known no more
                self.known.pop(t, None)
            return out
        outs = [x for x in tree_flatten(out)[0] if isinstance(x, torch.Tensor)]
        if func in _NO_VALUES or not outs or not all(_integral(o) for o in outs) or not all_known:
            return out
        with _disable_current_modes():
            real_out = func(*tree_map(self._real, args), **tree_map(self._real, kwargs))
        for fake, real in zip(outs, tree_flatten(real_out)[0], strict=True):
            self.known[fake] = real
        return out
