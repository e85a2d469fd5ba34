"""The block's feed-forward: an interface, the dense SwiGLU, and the registry the block builds from.

A feed-forward module maps [B, N, D] -> [B, N, D] and may report auxiliary losses (a mixture of experts'
load balancing and router z-loss, model/moe.py) into the dict its block passes down; a dense one reports
none. The block returns that dict beside its output, and `Transformer.forward(..., return_aux=True)` returns
them all. The block never names SwiGLU: it calls `build_feed_forward`. The kind
is the dense SwiGLU unless model.moe_experts > 0, then the mixture of experts (dense in its first
model.moe_first_dense blocks).
"""

from __future__ import annotations

from typing import Protocol

import torch

from .config import ModelConfig, is_moe_layer, moe_hidden
from .moe import MoE
from .swiglu import FeedForward


class FeedForwardModule(Protocol):
    def __call__(self, x: torch.Tensor, aux_losses: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The output; auxiliary losses, if any, are added to `aux_losses` under this module's own names."""

    def init_weights(self, init_std: float, residual_std: float) -> None:
        """Draws every weight: residual_std for the projection that writes into the residual stream."""


class FeedForwardKind(Protocol):
    name: str

    def build(self, cfg: ModelConfig, layer_idx: int) -> FeedForwardModule: ...

    def macs(self, cfg: ModelConfig, layer_idx: int) -> int:
        """Multiply-accumulates per token in block `layer_idx` (model/flops.py), = the weights a token passes
        through."""


class SwiGLU:
    """Dense SwiGLU of model.ffn_hidden: w1, w3 (D -> F) and w2 (F -> D)."""

    name = "swiglu"

    def build(self, cfg: ModelConfig, layer_idx: int) -> FeedForward:
        return FeedForward(cfg.d_model, cfg.ffn_hidden)

    def macs(self, cfg: ModelConfig, layer_idx: int) -> int:
        return 3 * cfg.d_model * cfg.ffn_hidden


class MixtureOfExperts:
    """model/moe.py's MoE where is_moe_layer, the dense SwiGLU in the first model.moe_first_dense blocks."""

    name = "moe"

    def build(self, cfg: ModelConfig, layer_idx: int) -> MoE | FeedForward:
        if not is_moe_layer(cfg, layer_idx):
            return SwiGLU().build(cfg, layer_idx)
        return MoE(cfg, layer_idx)

    def macs(self, cfg: ModelConfig, layer_idx: int) -> int:
        """What one token runs: the router (D -> E) and its top_k + shared experts, not the experts it is not
        sent to, so MFU measures the active parameters' work (dispatch moves memory and is not counted)."""
        if not is_moe_layer(cfg, layer_idx):
            return SwiGLU().macs(cfg, layer_idx)
        experts_run = cfg.moe_top_k + cfg.moe_shared_experts
        return cfg.d_model * cfg.moe_experts + experts_run * 3 * cfg.d_model * moe_hidden(cfg)


FEED_FORWARDS: dict[str, FeedForwardKind] = {kind.name: kind for kind in (SwiGLU(), MixtureOfExperts())}
DEFAULT_FEED_FORWARD = "swiglu"
"""The dense kind; model.moe_experts > 0 picks "moe"."""


def feed_forward_kind(cfg: ModelConfig) -> FeedForwardKind:
    return FEED_FORWARDS["moe" if cfg.moe_experts > 0 else DEFAULT_FEED_FORWARD]


def build_feed_forward(cfg: ModelConfig, layer_idx: int) -> FeedForwardModule:
    """The feed-forward module of block `layer_idx`."""
    return feed_forward_kind(cfg).build(cfg, layer_idx)
