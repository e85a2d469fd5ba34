"""LoaderSpec: what every loader is built from, declared once (TokenLoader, MixtureLoader, build_loader).

Loaders split the global stream by the data-parallel rank and size, not the global ones: under tensor
parallelism the ranks of one tensor-parallel group read the same batch, so dp_size is the number of groups.
"""

from __future__ import annotations

from dataclasses import dataclass

from data.shards import SPLITS


@dataclass(frozen=True)
class LoaderSpec:
    split: str
    """train | val."""
    seq_len: int
    """Tokens per window (inputs; the targets are shifted by one)."""
    micro_batch: int
    """Windows per data-parallel rank and micro-step."""
    seed: int
    """Seeds the epochs' permutations (and a mixture's interleave)."""
    dp_rank: int = 0
    """This process's data-parallel rank: which micro_batch of each global micro-step it reads."""
    dp_size: int = 1
    """Data-parallel ranks sharing the stream; a global micro-step holds dp_size * micro_batch windows."""
    shuffle: bool = True
    """Permute windows per epoch (val reads in order)."""
    prefetch: int = 2
    """Batches built ahead in a background thread (0: built on demand in the caller's thread)."""
    pin_memory: bool = False
    """Page-lock batches for asynchronous host-to-device copies (only when CUDA is present)."""
    verify: bool = True
    """Check local shards against the manifest's sha256 before first use (once per machine)."""

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r}; expected one of {list(SPLITS)}")
        if self.seq_len <= 0:
            raise ValueError(f"seq_len={self.seq_len}; expected a positive number of tokens")
        if self.dp_size < 1 or not 0 <= self.dp_rank < self.dp_size:
            raise ValueError(
                f"dp_rank={self.dp_rank}, dp_size={self.dp_size}; expected 0 <= dp_rank < dp_size"
            )
        if self.micro_batch < 1:
            raise ValueError(f"micro_batch={self.micro_batch}; expected at least 1 sequence")
        if self.prefetch < 0:
            raise ValueError(f"prefetch={self.prefetch}; expected 0 (no background thread) or more batches")
