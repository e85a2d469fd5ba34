"""Hydra composition and validation, written once for every entry point.

`python -m train` and `python -m launch` are Hydra apps (Hydra composes their command line); they hand the
result to `validated`. `data.prepare`, the benchmarks and the tests compose with `compose`. Either way the
same checks run: unknown keys, types (OmegaConf), then each package's value checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from conf.schema import ConfigError, RunConfig, check_choices, check_known_keys, register_configs
from data.config import validate_data_config
from model.config import ModelConfig, validate_model_config
from train.config import validate_train_config

CONF_DIR = Path(__file__).resolve().parent
"""conf/: config.yaml and the preset groups."""


@contextmanager
def hydra_session() -> Iterator[None]:
    """Hydra initialised over conf/ for the compose() calls inside (0.2 s saved on each), then restored, so
    that a Hydra app (`python -m train` run in-process) can still start afterwards."""
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        yield


def compose(overrides: list[str] | tuple[str, ...] = (), return_hydra_config: bool = False) -> DictConfig:
    """conf/config.yaml with `overrides` applied, as a Hydra app would compose its command line.

    Inside hydra_session() or a Hydra app of this project (python -m launch, whose config dir is conf/ too)
    it uses that initialisation; elsewhere it makes its own. Hydra's own errors (an unknown group option, a
    wrong type) propagate as Hydra raises them."""
    from hydra import compose as hydra_compose
    from hydra.core.global_hydra import GlobalHydra

    def composed() -> DictConfig:
        return hydra_compose(
            config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config
        )

    if GlobalHydra.instance().is_initialized():
        return composed()
    with hydra_session():
        return composed()


def validated(cfg: DictConfig, world_size: int) -> RunConfig:
    """The typed, checked RunConfig of a composed config at this world size; raises ConfigError naming the
    first key or value that cannot run."""
    if "hydra" in cfg:  # composed with return_hydra_config: Hydra's own node is not part of the run
        cfg = cfg.copy()
        with open_dict(cfg):
            del cfg["hydra"]
    check_known_keys(cfg)
    try:
        run_cfg: RunConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]  # resolves, type-checks
    except OmegaConfBaseException as err:
        raise ConfigError(str(err)) from err
    validate_run_config(run_cfg, world_size)
    return run_cfg


def validate_run_config(cfg: RunConfig, world_size: int) -> None:
    """Each section's own checks, the arguments they need from other sections passed in; raises ConfigError
    on the first value that cannot run at this world size."""
    # A RunConfig built in Python has not been through OmegaConf's Enum check; model.config checks its own
    # choices (a ModelConfig is also built in Python alone, for Transformer(cfg)).
    check_choices(cfg, skip=("model",))
    validate_model_config(cfg.model)
    validate_data_config(cfg.data)
    validate_train_config(cfg.trainer, cfg.optim, cfg.parallel, cfg.checkpoint, cfg.model, world_size)


def attention_presets(size: str) -> dict[str, ModelConfig]:
    """Attention preset name -> the ModelConfig of `model=<size> attention=<preset>` as `python -m train`
    composes it, by preset name (python -m model.summary, bench.decode)."""
    if not (CONF_DIR / "model" / f"{size}.yaml").exists():
        raise FileNotFoundError(f"{CONF_DIR / 'model' / size}.yaml: no such size preset")
    names = sorted(p.stem for p in (CONF_DIR / "attention").glob("*.yaml"))
    return {n: OmegaConf.to_object(compose([f"model={size}", f"attention={n}"]).model) for n in names}


def compose_run_config(overrides: list[str] | tuple[str, ...] = (), world_size: int = 1) -> RunConfig:
    """compose + validated: the RunConfig `python -m train <overrides>` would run at this world size."""
    return validated(compose(overrides), world_size)
