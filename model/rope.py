"""Interleaved (GPT-J style) rotary embeddings, the layout of the DIFF V2 reference code.

Channels (2i, 2i+1) of every head form one rotary pair rotated by angle pos * theta^(-2i/d), the same as
flash-attn's `apply_rotary_emb(..., interleaved=True)` with its usual cos/sin tables.
"""

from __future__ import annotations

import torch


def rope_tables(head_dim: int, max_seq_len: int, theta: float, device: torch.device | None = None):
    """(cos, sin), each float32 [max_seq_len, head_dim // 2]: row p holds the angles of position p."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_seq_len, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates x [B, N, H, d] by the tables' rows for its N positions ([N, d/2] each).

    Computed in float32 (at least) and cast back, so bf16 activations keep accurate angles.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    pairs = x.to(dtype).unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[:, None, :].to(dtype), sin[:, None, :].to(dtype)
    rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)
