"""What every attention variant shares, and the interface a variant declares.

A variant is one module (model/attention_<name>.py) and one preset (conf/attention/<name>.yaml): its module
defines an `AttentionModule` (an `AttentionBase` subclass) and an `AttentionVariant` (how to build it, its
parameter and FLOPs formulas), registered in model/variants.py. `AttentionBase` holds the plumbing: the
bias-free q/k/v/o projections, interleaved RoPE on q and k, the KV cache, the kernel call with the document
boundaries. Reshapes take the head count from the tensor (`view(B, N, -1, d)`), never from the config, so a
tensor-parallel shard holding a slice of a projection's heads runs the same code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from .documents import Documents
from .kernel import attention
from .kv_cache import KVCache
from .rope import apply_rope

if TYPE_CHECKING:
    from .config import ModelConfig

Rope = tuple[torch.Tensor, torch.Tensor]


class AttentionModule(Protocol):
    """The attention module of one block, as the model, the KV cache and the diagnostics use it."""

    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    o_proj: nn.Linear
    n_out_heads: int
    """Heads of o_proj's input (diagnostics: context RMS per output head)."""
    out_head_dim: int
    """Width of each of them."""

    def __call__(
        self, x: torch.Tensor, rel_pos: Rope, cache: KVCache | None = None, docs: Documents | None = None
    ) -> torch.Tensor: ...

    def reset_variant_parameters(self) -> None:
        """Initialises the parameters beyond q/k/v/o (which Transformer.init_weights draws)."""

    def kv_cache(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype) -> KVCache: ...

    # Diagnostics hooks (model/diagnostics.py)
    def lambda_values(self, x: torch.Tensor) -> torch.Tensor | None:
        """The lambda each output head subtracts with, or None for a variant without one."""

    def rotated_qk(self, x: torch.Tensor, rel_pos: Rope) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated queries [B, N, maps, d] and the key each softmax map reads [B, N, maps, d]."""

    def head_output_module(self) -> nn.Module:
        """The module whose input is the per-head output (before any per-head norm): context RMS reads it."""

    def output_head_maps(self, n_maps: int) -> list[list[int]]:
        """For each output head, the softmax maps (query heads) it combines."""


class AttentionVariant(Protocol):
    """A registered variant (model/variants.py): `model.attention=<name>`."""

    name: str

    def build(self, cfg: ModelConfig, layer_idx: int) -> AttentionModule:
        """The attention module of block `layer_idx`."""

    def projection_macs(self, cfg: ModelConfig) -> int:
        """Multiply-accumulates per token of one layer's projections (= their weight count)."""

    def kernel_flops(self, cfg: ModelConfig, seq_len: int) -> float:
        """Forward FLOPs per token of the softmax-attention matmuls (model/flops.py says what is counted)."""


class AttentionBase(nn.Module):
    """Projections, RoPE, KV cache and kernel call; a subclass combines the kernel's output heads.

    q_proj: D -> q_heads * head_dim; k_proj, v_proj: D -> kv_heads * head_dim (values viewed as heads of
    `value_dim`); o_proj: out_width -> D. No biases (the reference's names and shapes).
    """

    def __init__(
        self,
        d_model: int,
        q_heads: int,
        kv_heads: int,
        head_dim: int,
        out_width: int,
        value_dim: int | None = None,
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.value_dim = value_dim or head_dim
        self.attn_impl = attn_impl
        self.q_proj = nn.Linear(d_model, q_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(out_width, d_model, bias=False)

    def project(self, x: torch.Tensor, rope: Rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated q [B, N, q heads, d] and k [B, N, kv heads, d]; v [B, N, value heads, value_dim]."""
        b, n, _ = x.shape
        q = apply_rope(self.q_proj(x).view(b, n, -1, self.head_dim), *rope)
        k = apply_rope(self.k_proj(x).view(b, n, -1, self.head_dim), *rope)
        v = self.v_proj(x).view(b, n, -1, self.value_dim)
        return q, k, v

    def cached(
        self, k: torch.Tensor, v: torch.Tensor, cache: KVCache | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """k and v of every token so far: appended to the cache when decoding."""
        return (k, v) if cache is None else cache.update(k, v)

    def kernel(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, docs: Documents | None
    ) -> torch.Tensor:
        """Causal (and, with docs, same-document) softmax attention: [B, N, q heads, value width]."""
        return attention(q, k, v, self.attn_impl, docs)

    def output(self, heads: torch.Tensor) -> torch.Tensor:
        """o_proj over the output heads [B, N, heads, width], whatever number of them this shard holds."""
        return self.o_proj(heads.flatten(2))

    def head_output_module(self) -> nn.Module:
        return self.o_proj

    def kv_cache(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        """A cache of this module's kv heads (the ones its projections hold): never the query heads."""
        k_shape = (self.k_proj.weight.shape[0] // self.head_dim, self.head_dim)
        v_shape = (self.v_proj.weight.shape[0] // self.value_dim, self.value_dim)
        return KVCache(batch, max_len, k_shape, v_shape, device, dtype)


_CLASSES = {"Attention": ".attention_diff_v2", "DiffV1Attention": ".attention_diff_v1"}


def __getattr__(name: str) -> object:
    # The variant classes live in their own modules; this name is kept for existing imports (the spec tests).
    if name not in _CLASSES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_CLASSES[name], __package__), name)
