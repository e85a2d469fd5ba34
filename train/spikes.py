"""Transient spikes of the loss and the grad norm: a jump above the recent level that a noise scale cannot
explain.

    level = median of the last LEVEL_STEPS (5) values       (lags a falling loss by ~2 steps, not W / 2)
    sigma = 1.4826 * MAD(second differences of the last W values) / sqrt(6)   (robust per-step noise)
    spike: value > max(factor * level, level + deviations * sigma)

Why second differences: x[t] - 2 x[t-1] + x[t-2] cancels the local slope, and the MAD (spread around the
median) cancels a steady bend, so the steep, bending decline of the first steps does not pass for noise.
First differences kept the bend: at lr 1e-1 the first 10 steps' decline read as 6 sigma = 0.9 nats and
hid +9-15% jumps. For white noise of std s the second differences have std s * sqrt(6).

Warm-up: the rule counts from the (MIN_HISTORY + 1)-th value (step 6), with the window it has so far;
the level is then the median of the values there are (up to 5) and sigma is measured over those few
steps, so an early spike counts as soon as it rises above the early scatter. Before that, nothing counts
(two or three steps have no level and no noise to compare with).

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

MIN_HISTORY = 5
"""Values needed before anything counts: five give a level and three second differences for the noise."""

FEW_SAMPLES = 3.0
"""sigma is widened by (1 + FEW_SAMPLES / n) for n second differences: a MAD of the few of the first steps
often reads low (x2 at step 6, x1.4 at step 11, x1.03 with a full 100-step window)."""

WINDOW_MIN = 10
"""The smallest window (trainer.spike_window) the noise may be measured over."""

LEVEL_STEPS = 5
"""Values whose median is the level a new value is compared with."""

MAD_TO_STD = 1.4826
"""median(|x - median|) * 1.4826 estimates the std of normally distributed values."""


class SpikeCounter:
    """Counts spikes of one series (loss or grad norm); see the module docstring for the rule."""

    def __init__(self, factor: float, window: int, deviations: float = 0.0) -> None:
        if factor < 1.0:
            raise ValueError(f"spike factor={factor} must be >= 1 (a multiple of the recent level)")
        if window < WINDOW_MIN:
            raise ValueError(f"spike window={window} must be >= {WINDOW_MIN} steps")
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
        bends = [a - 2 * b + c for a, b, c in zip(values, values[1:], values[2:], strict=False)]
        center = statistics.median(bends)
        sigma = MAD_TO_STD * statistics.median(abs(d - center) for d in bends) / math.sqrt(6)
        sigma *= 1 + FEW_SAMPLES / len(bends)
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
