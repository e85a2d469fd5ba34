"""The run config a benchmark measures, composed and validated exactly as `python -m train` does it."""

from __future__ import annotations

import os

from conf import CONF_DIR, RunConfig
from conf import compose_run_config as _compose_run_config

__all__ = ["CONF_DIR", "compose_run_config"]


def compose_run_config(overrides: list[str]) -> RunConfig:
    """conf/config.yaml with `overrides` at this process's WORLD_SIZE; a bad value raises the error
    `python -m train` would print."""
    return _compose_run_config(overrides, world_size=int(os.environ.get("WORLD_SIZE", 1)))
