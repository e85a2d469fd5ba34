"""Per-layer key/value cache for decoding: it holds the layer's h_kv key/value heads, never the query heads.

That is DIFF V2's decoding claim: its 2h query heads read the same h_kv cached heads as the baseline, so the
cache (the memory-bound part of decoding) is exactly the baseline's.
"""

from __future__ import annotations

import torch


class KVCache:
    """Preallocated [B, max_len, heads, dim] key and value buffers filled left to right."""

    def __init__(
        self,
        batch: int,
        max_len: int,
        k_shape: tuple[int, int],
        v_shape: tuple[int, int],
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        """k_shape, v_shape: (heads, dim) of one token's keys and values."""
        self.k = torch.zeros(batch, max_len, *k_shape, device=device, dtype=dtype)
        self.v = torch.zeros(batch, max_len, *v_shape, device=device, dtype=dtype)
        self.pos = 0
        """Tokens cached so far; also the position of the next token."""

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Appends k, v [B, n, heads, dim] and returns all cached keys and values so far."""
        end = self.pos + k.shape[1]
        if end > self.k.shape[1]:
            raise ValueError(f"KV cache holds {self.k.shape[1]} tokens; appending {k.shape[1]} at {self.pos}")
        self.k[:, self.pos : end] = k
        self.v[:, self.pos : end] = v
        self.pos = end
        return self.k[:, :end], self.v[:, :end]


class KVCaches(list):
    """One KVCache per layer (indexed as a list) plus the tokens cached so far: a model with document-aware
    attention (model.doc_mask) reads the document boundaries and positions of every cached token from them."""

    def __init__(self, layers: list[KVCache], batch: int, max_len: int, device: torch.device) -> None:
        super().__init__(layers)
        self.tokens = torch.zeros(batch, max_len, dtype=torch.long, device=device)

    @property
    def pos(self) -> int:
        """Tokens cached so far; also the position of the next token."""
        return self[0].pos

    def record(self, tokens: torch.Tensor) -> torch.Tensor:
        """Appends tokens [B, n] (before the layers append their keys) and returns all tokens so far."""
        end = self.pos + tokens.shape[1]
        if end > self.tokens.shape[1]:
            raise ValueError(
                f"KV cache holds {self.tokens.shape[1]} tokens; appending {tokens.shape[1]} at {self.pos}"
            )
        self.tokens[:, self.pos : end] = tokens
        return self.tokens[:, :end]
