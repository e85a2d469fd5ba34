"""Which directories hold runs: a run dir itself, or a sweep dir whose subdirs are runs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from launch.summary import STATUS_FILE
from train.metrics import METRICS_FILE


def is_run_dir(path: Path) -> bool:
    return (path / METRICS_FILE).exists() or (path / STATUS_FILE).exists()


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run dirs among `paths`: each is a run dir itself, or a sweep dir whose subdirs are runs."""
    runs: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: not a directory (expected a run dir or a sweep dir)")
        if is_run_dir(path):
            runs.append(path)
            continue
        found = sorted(p for p in path.iterdir() if p.is_dir() and is_run_dir(p))
        if not found:
            raise FileNotFoundError(f"{path}: holds no {METRICS_FILE}, neither itself nor in its subdirs")
        runs += found
    return runs
