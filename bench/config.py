"""The run config a benchmark measures, composed and validated exactly as `python -m train` does it."""

from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from model import validate_model_config
from train.config import RunConfig, register_configs
from train.validate import validate_run_config

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose_run_config(overrides: list[str]) -> RunConfig:
    """conf/config.yaml with `overrides`; a bad value raises the error `python -m train` would print."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg: RunConfig = OmegaConf.to_object(compose(config_name="config", overrides=overrides))
    validate_model_config(cfg.model)
    validate_run_config(cfg, world_size=int(os.environ.get("WORLD_SIZE", 1)))
    return cfg
