"""Loss and grad-norm spikes: a value above k times the running median of the last W values counts once."""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any

# Too few values make the median meaningless (the first steps of training fall steeply).
MIN_HISTORY = 10


class SpikeCounter:
    def __init__(self, factor: float, window: int) -> None:
        self.factor = factor
        self.history: deque[float] = deque(maxlen=window)
        self.count = 0

    def update(self, value: float) -> bool:
        """Records one value; True when it is a spike against the values before it."""
        spike = (
            len(self.history) >= MIN_HISTORY
            and math.isfinite(value)
            and value > self.factor * statistics.median(self.history)
        )
        self.count += int(spike)
        if math.isfinite(value):
            self.history.append(value)
        return spike

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.history.clear()
        self.history.extend(float(v) for v in state["history"])
