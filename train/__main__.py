"""`python -m train <overrides>` (one process) or `torchrun --nproc_per_node=N -m train <overrides>`.

Exit codes: 0 done (or checkpointed on SIGTERM/SIGUSR1, or when its torchrun died), 1 a bad key or type
(Hydra names the key; also a key added with `+` that the schema does not know), 2 a bad value (the message
names the field), 3 the loss diverged (no checkpoint written), 4 a checkpoint refused (corrupt, unsafe to
unpickle, or of another model: the message names the file or the fields), 5 the run directory refused (in
use by another job, or holding another run's output: the message names it). train.debug's injected crash
exits with EXIT_INJECTED_CRASH (17).
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
EXIT_CHECKPOINT = 4
EXIT_RUN_DIR = 5


def _fail(message: str, code: int) -> None:
    if int(os.environ.get("RANK", 0)) == 0:
        print(message, file=sys.stderr, flush=True)
    sys.exit(code)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def _main(cfg: DictConfig) -> None:
    from data import DatasetError
    from train.checkpoint import CheckpointError
    from train.loop import TrainingDiverged
    from train.run import DatasetUnavailable, run_training
    from train.rundir import RunDirError

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
    except CheckpointError as err:
        _fail(f"checkpoint refused: {err}", EXIT_CHECKPOINT)
    except RunDirError as err:
        _fail(f"run dir refused: {err}", EXIT_RUN_DIR)


def main() -> None:
    register_configs()
    # Hydra would create hydra.run.dir (${run.dir}) before any check ran: a refused run (a bad run.name,
    # a run dir in use) must leave nothing behind. The run creates its dir itself.
    if not any(arg.startswith("hydra.run.dir=") for arg in sys.argv[1:]):
        sys.argv.append("hydra.run.dir=.")
    _main()


if __name__ == "__main__":
    main()
