"""The block's feed-forward: an interface, the dense SwiGLU, and the registry the block builds from.

A feed-forward module maps [B, N, D] -> [B, N, D] and may report auxiliary losses (a mixture of experts'
load balancing, next) into the dict `Transformer.forward(..., aux_losses=...)` passes down; a dense one
reports none. The block never names SwiGLU: it calls `build_feed_forward`.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class FeedForwardModule(Protocol):
    def __call__(self, x: torch.Tensor, aux_losses: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The output; auxiliary losses, if any, are added to `aux_losses` under this module's own names."""

    def init_weights(self, init_std: float, residual_std: float) -> None:
        """Draws every weight: residual_std for the projection that writes into the residual stream."""


class FeedForwardKind(Protocol):
    name: str

    def build(self, cfg: ModelConfig, layer_idx: int) -> FeedForwardModule: ...

    def macs(self, cfg: ModelConfig) -> int:
        """Multiply-accumulates per token (model/flops.py), = the weights a token passes through."""


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


class SwiGLU:
    """Dense SwiGLU of model.ffn_hidden: w1, w3 (D -> F) and w2 (F -> D)."""

    name = "swiglu"

    def build(self, cfg: ModelConfig, layer_idx: int) -> FeedForward:
        return FeedForward(cfg.d_model, cfg.ffn_hidden)

    def macs(self, cfg: ModelConfig) -> int:
        return 3 * cfg.d_model * cfg.ffn_hidden


FEED_FORWARDS: dict[str, FeedForwardKind] = {kind.name: kind for kind in (SwiGLU(),)}
DEFAULT_FEED_FORWARD = "swiglu"
"""Every model is dense today; the MoE issue adds a `model.ffn` choice that picks from FEED_FORWARDS."""


def feed_forward_kind(cfg: ModelConfig) -> FeedForwardKind:
    return FEED_FORWARDS[DEFAULT_FEED_FORWARD]


def build_feed_forward(cfg: ModelConfig, layer_idx: int) -> FeedForwardModule:
    """The feed-forward module of block `layer_idx`."""
    return feed_forward_kind(cfg).build(cfg, layer_idx)
