"""How many windows of each mixture source one interleaving block holds: the mixture's weights made exact.

numpy only, so the config check (data/config.py) applies the very rule the loader runs.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

from data.shards import DatasetError

BLOCK = 4096
"""Windows per interleaving block: proportions are exact over each block; a source needs weight >= 1/BLOCK."""


def block_counts(
    weights: list[tuple[str, object]], field: str = "data.mixture", error: type[ValueError] = DatasetError
) -> np.ndarray:
    """Windows of each (name, weight) source per block: BLOCK * normalised weight, rounded by largest
    remainder; raises `error` naming `field`.<name>.weight when a weight cannot run."""
    if not weights:
        raise error(f"{field} is empty; expected at least one source with a dir and a weight")
    for name, w in weights:
        if isinstance(w, bool) or not isinstance(w, Real) or not math.isfinite(w) or w <= 0:
            raise error(
                f"{field}.{name}.weight={w!r}: expected a finite number > 0 (a source to leave out is "
                "removed from the mixture, not weighted 0)"
            )
    values = np.array([float(w) for _, w in weights])
    exact = BLOCK * values / values.sum()
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")  # ties go to the earlier source
    counts[order[: BLOCK - int(counts.sum())]] += 1
    for (name, w), c in zip(weights, counts.tolist(), strict=True):
        if c == 0:
            raise error(
                f"{field}.{name}.weight={w!r} is below 1/{BLOCK} of the total "
                f"({values.sum():g}): the source would get no window; raise its weight or drop it"
            )
    return counts
