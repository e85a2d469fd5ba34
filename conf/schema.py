"""The run's typed schema: the per-package sections side by side, plus the checks every section shares.

Each package owns its section (model.config, data.config, train.config, launch.config) and knows nothing of
the others; this module puts them together for Hydra. conf/*.yaml presets state only what differs from these
defaults (tests/test_config_layer.py holds them to it).
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from data.config import DataConfig
from errors import ConfigError, UnknownConfigKey
from launch.config import LaunchConfig
from model.config import ModelConfig
from train.config import (
    CheckpointConfig,
    DebugConfig,
    OptimConfig,
    ParallelConfig,
    RunInfo,
    TrainerConfig,
    WandbConfig,
)


@dataclass
class RunConfig:
    run: RunInfo = field(default_factory=RunInfo)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    """Test hooks (fault injection); off by default, never needed by a real run."""


def register_configs() -> None:
    """Puts the schema in Hydra's ConfigStore as `run_config`, first in conf/config.yaml's defaults."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="run_config", node=RunConfig)


def check_known_keys(cfg: DictConfig, schema: type = RunConfig, prefix: str = "") -> None:
    """Raises UnknownConfigKey for a key the schema's dataclasses do not declare.

    Hydra lets `+trainer.foo=1` add a key to a structured config, and OmegaConf.to_object then drops it:
    the run would be saved with a setting that does nothing."""
    known = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key in cfg:
        full = f"{prefix}{key}"
        if key not in known:
            raise UnknownConfigKey(
                f"{full} is not a config key (a `+` override added it, and it would be ignored); "
                f"{prefix.rstrip('.') or 'the config'} has: {', '.join(sorted(known))}"
            )
        # An interpolation or a missing value is not a mapping of keys to check (and is not resolved here).
        if OmegaConf.is_missing(cfg, key) or OmegaConf.is_interpolation(cfg, key):
            continue
        node = cfg[key]
        if not isinstance(node, DictConfig):
            continue
        hint = hints[str(key)]
        if dataclasses.is_dataclass(hint):
            check_known_keys(node, hint, f"{full}.")
        elif typing.get_origin(hint) is dict and dataclasses.is_dataclass(typing.get_args(hint)[1]):
            for name in node:  # a mapping of sections, e.g. data.mixture: name -> source
                check_known_keys(node[name], typing.get_args(hint)[1], f"{full}.{name}.")


def check_choices(obj: Any, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """Raises ConfigError for an Enum field holding a value its Enum does not list (fields named in `skip`
    are left to their own section's check).

    OmegaConf already checks Enum fields of a composed config; this covers configs built in Python
    (`RunConfig()` with a field set by hand), so both paths give the same message."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        if f.name in skip:
            continue
        if dataclasses.is_dataclass(value):
            check_choices(value, f"{prefix}{f.name}.")
        elif isinstance(hint, type) and issubclass(hint, enum.Enum) and not isinstance(value, hint):
            allowed = [m.value for m in hint]
            if value not in allowed:
                raise ConfigError(f"{prefix}{f.name}={value!r} is not one of {allowed}")
            setattr(obj, f.name, hint(value))


def to_yaml(cfg: RunConfig) -> str:
    """The resolved config as saved with a run (choices as their plain string values)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg), resolve=True)
