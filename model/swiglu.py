"""The dense SwiGLU feed-forward module: w2(silu(w1 x) * w3 x). The block's default feed-forward, and the
shared expert of a mixture of experts (model/moe.py); model/feed_forward.py registers it."""

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

    def forward(self, x: torch.Tensor, aux_losses: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))

    @torch.no_grad()
    def init_weights(self, init_std: float, residual_std: float) -> None:
        nn.init.normal_(self.w1.weight, std=init_std)
        nn.init.normal_(self.w3.weight, std=init_std)
        nn.init.normal_(self.w2.weight, std=residual_std)
