"""Transient spikes of the loss and the grad norm: a jump above the recent level that a noise scale cannot
explain.

    level = median of the last LEVEL_STEPS (5) values       (lags a falling loss by ~2 steps, not W / 2)
    sigma = 1.4826 * MAD(first differences of the last W values) / sqrt(2)   (robust per-step noise; the
            differences remove the trend, so a steep early decay does not inflate it)
    spike: value > max(factor * level, level + deviations * sigma)

- Loss (trainer.loss_spike_jump, trainer.loss_spike_deviations): factor = 1 + jump (default 1.03) and 6
  robust deviations. The claim is about transient jumps of a few percent to tens of percent that recover,
  not divergence: the relative floor catches them when the loss is smooth (large batches), the deviation
  term keeps the per-step noise of small batches from counting.
- Grad norm (trainer.grad_spike_factor): a multiple of its recent level (default 2x), no deviation term;
  grad norms are heavy-tailed, so a noise-scaled threshold would grow with the spikes themselves.

One spike is one event: consecutive steps above the threshold count once. Medians, not means, keep one
spike from raising the bar for the next. Everything is restored on resume: the window, the totals, whether
the last step was in a spike, and the spikes not yet reported in a logged row.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from train.config import TrainerConfig

MIN_HISTORY = 10
"""Values needed before anything counts: the first steps of training fall too steeply to have a level."""

LEVEL_STEPS = 5
"""Values whose median is the level a new value is compared with."""

MAD_TO_STD = 1.4826
"""median(|x - median|) * 1.4826 estimates the std of normally distributed values."""


class SpikeCounter:
    """Counts spikes of one series (loss or grad norm); see the module docstring for the rule."""

    def __init__(self, factor: float, window: int, deviations: float = 0.0) -> None:
        if factor < 1.0:
            raise ValueError(f"spike factor={factor} must be >= 1 (a multiple of the recent level)")
        if window < MIN_HISTORY:
            raise ValueError(f"spike window={window} must be >= {MIN_HISTORY} steps")
        if deviations < 0:
            raise ValueError(f"spike deviations={deviations} must be >= 0")
        self.factor, self.deviations = factor, deviations
        self.history: deque[float] = deque(maxlen=window)
        self.count = 0
        """Spikes since the start of the run."""
        self.pending = 0
        """Spikes since the last `take_pending()` (the last logged row)."""
        self.in_spike = False
        """Whether the last value was above the threshold (the next one above continues that spike)."""

    def threshold(self) -> float:
        """The value above which the next value is a spike (inf until MIN_HISTORY values are in)."""
        if len(self.history) < MIN_HISTORY:
            return math.inf
        values = list(self.history)
        level = statistics.median(values[-LEVEL_STEPS:])
        diffs = [b - a for a, b in zip(values, values[1:], strict=False)]
        center = statistics.median(diffs)
        sigma = MAD_TO_STD * statistics.median(abs(d - center) for d in diffs) / math.sqrt(2)
        return max(self.factor * level, level + self.deviations * sigma)

    def update(self, value: float) -> bool:
        """Records one value; True when a spike starts with it."""
        if not math.isfinite(value):  # divergence is the NaN guard's business, and must not poison the median
            return False
        above = value > self.threshold()
        starts = above and not self.in_spike
        self.in_spike = above
        self.count += int(starts)
        self.pending += int(starts)
        self.history.append(value)
        return starts

    def take_pending(self) -> int:
        """Spikes since the previous call; resets to 0 (one logged row reports the steps since the last)."""
        pending, self.pending = self.pending, 0
        return pending

    def state_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "pending": self.pending,
            "in_spike": self.in_spike,
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        # checkpoints written before these fields existed
        self.pending, self.in_spike = int(state.get("pending", 0)), bool(state.get("in_spike", False))
        self.history.clear()
        self.history.extend(float(v) for v in state["history"])


def spike_counters(t: TrainerConfig) -> tuple[SpikeCounter, SpikeCounter]:
    """(loss, grad norm) counters with the trainer's separate thresholds and one window."""
    loss = SpikeCounter(1.0 + t.loss_spike_jump, t.spike_window, t.loss_spike_deviations)
    return loss, SpikeCounter(t.grad_spike_factor, t.spike_window)
