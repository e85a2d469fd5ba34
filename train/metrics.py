"""Metric sinks (console line, metrics.jsonl, wandb) behind one logger that only rank 0 builds."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from train.config import WandbConfig

Row = dict[str, Any]
METRICS_FILE = "metrics.jsonl"
"""One JSON object a line, in the run dir: training rows, val_loss, diag/*, an `end` or `diverged` event."""


def read_metrics(path: Path) -> list[Row]:
    """The rows of a metrics.jsonl (none when it is missing); a line cut short by a crash is skipped.

    The one reader of the file: the trainer (truncating on resume), launch's table and report, bench."""
    rows: list[Row] = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


class Sink(Protocol):
    def log(self, row: Row) -> None: ...

    def close(self, final: Row) -> None:
        """The run finished: write the final summary, then release the sink."""

    def abort(self, exit_code: int) -> None:
        """The run ends without a summary (diverged, failed, or stopped to be resumed): release the sink."""


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _fmt_count(value: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}"


class ConsoleSink:
    """One compact line per logged step: progress bar, loss, lr, grad norm, throughput, MFU, memory, ETA."""

    BAR = 20

    def __init__(self, max_steps: int, start_step: int) -> None:
        self.max_steps, self.start_step = max_steps, start_step
        self.started = time.perf_counter()

    def log(self, row: Row) -> None:
        step = row["step"]
        if "event" in row:  # e.g. diverged: the entry point prints its own message
            return
        if "val_loss" in row:
            print(f"step {step:>6} | val_loss {row['val_loss']:.4f}", flush=True)
            return
        if "loss" not in row:
            maxima = {k: v for k, v in row.items() if k.startswith("diag/") and "/L" not in k}
            shown = " ".join(f"{k[5:]} {v:.3g}" for k, v in sorted(maxima.items()))
            print(f"step {step:>6} | diag {shown}", flush=True)
            return
        done = step / self.max_steps
        filled = int(self.BAR * done)
        elapsed = time.perf_counter() - self.started
        rate = (step - self.start_step) / elapsed if elapsed > 0 else 0.0
        eta = (self.max_steps - step) / rate if rate > 0 else math.inf
        parts = [
            f"step {step:>6}/{self.max_steps} [{'#' * filled}{'.' * (self.BAR - filled)}] {done:4.0%}",
            f"loss {row['loss']:.4f}",
            f"lr {row['lr']:.2e}",
            f"gn {row['grad_norm']:.3f}",
            f"{_fmt_count(row['tokens_per_s'])} tok/s",
        ]
        if row.get("mfu") is not None:
            parts.append(f"mfu {row['mfu']:.1%}")
        parts.append(f"mem {row['peak_mem_gb']:.2f}G")
        parts.append(f"eta {_fmt_duration(eta) if math.isfinite(eta) else '?'}")
        print(" | ".join(parts), flush=True)

    def close(self, final: Row) -> None:
        def number(key: str) -> float:
            value = final.get(key)
            return math.nan if value is None else value

        print(
            f"done: step {final['step']} loss {number('loss'):.4f} "
            f"val_loss {number('val_loss'):.4f} spikes loss/grad "
            f"{final['loss_spikes']}/{final['grad_spikes']} in {_fmt_duration(final['wall_s'])}",
            flush=True,
        )

    def abort(self, exit_code: int) -> None:
        sys.stdout.flush()


class JsonlSink:
    """`<run.dir>/metrics.jsonl`: one JSON object per logged row, flushed at once (a crash loses nothing)."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        self._truncate_after(resume_step)
        self.file = path.open("a")

    def _truncate_after(self, step: int) -> None:
        """Drops rows a crashed attempt logged past the checkpoint we resume from (or all, on a fresh start),
        so the file reads as one uninterrupted history."""
        if not self.path.exists():
            return
        rows = read_metrics(self.path) if step > 0 else []
        kept = [r for r in rows if r.get("step", 0) <= step and r.get("event") != "end"]
        self.path.write_text("".join(json.dumps(row) + "\n" for row in kept))

    def log(self, row: Row) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self, final: Row) -> None:
        self.log({"event": "end", **final})
        self.file.close()

    def abort(self, exit_code: int) -> None:
        self.file.close()  # no end line: a resumed job continues this history


class WandbSink:
    """wandb on rank 0, imported lazily. A resumed job passes the saved id and continues its run."""

    def __init__(
        self, cfg: WandbConfig, name: str, run_dir: Path, run_id: str, config: dict[str, Any]
    ) -> None:
        import wandb

        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group,
            tags=list(cfg.tags),
            name=cfg.name or name,
            dir=str(run_dir),
            mode=cfg.mode,
            id=run_id,
            resume="allow",
            config=config,
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )

    def log(self, row: Row) -> None:
        step = row["step"]
        self.run.log({k: v for k, v in row.items() if k != "step" and v is not None}, step=step)

    def close(self, final: Row) -> None:
        self.run.summary.update({k: v for k, v in final.items() if v is not None})
        self.run.finish()

    def abort(self, exit_code: int) -> None:
        self.run.finish(exit_code=exit_code)  # 0: shown finished; the resumed job continues the same run


class MetricsLogger:
    """Fans rows out to the sinks. Ranks other than 0 get a logger with no sinks."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def log(self, row: Row) -> None:
        for sink in self.sinks:
            sink.log(row)

    def close(self, final: Row) -> None:
        for sink in self.sinks:
            sink.close(final)

    def abort(self, exit_code: int = 1) -> None:
        """Flushes and closes without an end line: a diverged or failed run (exit_code 1), or one stopped to
        be resumed later (exit_code 0: wandb shows it finished; the resumed job continues it)."""
        for sink in self.sinks:
            sink.abort(exit_code)
