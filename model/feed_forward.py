"""The block's feed-forward: a dense SwiGLU, or a mixture of SwiGLU experts (model/moe.py), chosen by config.

Every feed-forward takes the normalised residual stream [B, N, D] and returns `(output [B, N, D], aux_loss)`:
aux_loss is a scalar the training loss adds (the MoE's load-balancing and router z-losses, already weighted),
or None when the layer has none. `init_weights(init_std, residual_std)` (re)initialises it in place: every
matrix ~ N(0, init_std), the projection writing into the residual stream ~ N(0, residual_std).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_model, bias=False)
        self.w3 = nn.Linear(d_model, hidden, bias=False)

    def swiglu(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.swiglu(x), None

    @torch.no_grad()
    def init_weights(self, init_std: float, residual_std: float) -> None:
        nn.init.normal_(self.w1.weight, std=init_std)
        nn.init.normal_(self.w3.weight, std=init_std)
        nn.init.normal_(self.w2.weight, std=residual_std)
