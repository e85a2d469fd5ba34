"""Interleaved (GPT-J style) rotary embeddings, the layout of the DIFF V2 reference code.

Channels (2i, 2i+1) of every head form one rotary pair rotated by angle pos * theta^(-2i/d), the same as
flash-attn's `apply_rotary_emb(..., interleaved=True)` with its usual cos/sin tables.
"""

from __future__ import annotations

import torch


def rope_tables(
    head_dim: int,
    max_seq_len: int,
    theta: float,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each [max_seq_len, head_dim // 2]: row p holds the angles of position p.

    Angles are computed in float64 (a float32 pos * freq is off by ~1e-4 rad at position 4096) and only the
    final cos / sin are rounded to `dtype`.
    """
    exponents = torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim
    inv_freq = 1.0 / (theta**exponents)
    angles = torch.outer(torch.arange(max_seq_len, device=device, dtype=torch.float64), inv_freq)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates x [B, N, H, d] by the tables' rows for its N positions: [N, d/2] each (one set of positions
    for every row), or [B', N, d/2] with B' >= B (per-row positions, e.g. restarting at each document; the
    first B rows are used, so a caller may rotate a slice of the batch).

    Computed in float32 (at least) and cast back, so bf16 activations keep accurate angles.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    pairs = x.to(dtype).unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    if cos.dim() == 3:
        cos, sin = cos[: x.shape[0]], sin[: x.shape[0]]
    cos, sin = cos.unsqueeze(-2).to(dtype), sin.unsqueeze(-2).to(dtype)
    rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)
