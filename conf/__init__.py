"""The config layer: conf/*.yaml presets over one typed schema, composed and validated in one place.

    from conf import RunConfig, compose, validated, compose_run_config, ConfigError

data, train, launch and bench use this layer for the whole run's config; none imports another's for it.
"""

from conf.compose import (
    CONF_DIR,
    attention_presets,
    compose,
    compose_run_config,
    hydra_session,
    validate_run_config,
    validated,
)
from conf.schema import ConfigError, RunConfig, UnknownConfigKey, register_configs

__all__ = [
    "CONF_DIR",
    "ConfigError",
    "RunConfig",
    "UnknownConfigKey",
    "attention_presets",
    "compose",
    "compose_run_config",
    "hydra_session",
    "register_configs",
    "validate_run_config",
    "validated",
]
