"""`python -m train <overrides>` (one process) or `torchrun --nproc_per_node=N -m train <overrides>`.

Exit codes: 0 done (or checkpointed on SIGTERM/SIGUSR1), 1 a bad key or type (Hydra names the key; also a
key added with `+` that the schema does not know), 2 a bad value (the message names the field), 3 the loss
diverged (no checkpoint written). train.debug's injected crash exits with EXIT_INJECTED_CRASH (17).
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from conf import ConfigError, UnknownConfigKey, register_configs, validated

EXIT_BAD_KEY = 1
EXIT_BAD_VALUE = 2
EXIT_DIVERGED = 3


def _fail(message: str, code: int) -> None:
    if int(os.environ.get("RANK", 0)) == 0:
        print(message, file=sys.stderr, flush=True)
    sys.exit(code)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def _main(cfg: DictConfig) -> None:
    from data import DatasetError
    from train.loop import TrainingDiverged
    from train.run import DatasetUnavailable, run_training

    try:
        run_cfg = validated(cfg, world_size=int(os.environ.get("WORLD_SIZE", 1)))
    except UnknownConfigKey as err:
        _fail(f"config error: {err}", EXIT_BAD_KEY)
    except ValueError as err:  # ConfigError, the model's checks
        _fail(f"config error: {err}", EXIT_BAD_VALUE)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    try:
        run_training(run_cfg, config_yaml)
    except ConfigError as err:
        _fail(f"config error: {err}", EXIT_BAD_VALUE)
    except TrainingDiverged as err:
        _fail(f"training diverged: {err}", EXIT_DIVERGED)
    except (DatasetUnavailable, DatasetError) as err:  # DatasetError: a shard failed its checks
        _fail(f"dataset unavailable: {err}", EXIT_BAD_VALUE)


def main() -> None:
    register_configs()
    _main()


if __name__ == "__main__":
    main()
