"""`python -m train <overrides>` (one process) or `torchrun --nproc_per_node=N -m train <overrides>`.

Exit codes: the project's contract (errors/, the README's table): 0 done (or checkpointed on SIGTERM/SIGUSR1,
or when its torchrun died), 1 an unknown key, 2 a bad value or the dataset unavailable, 3 diverged,
4 a checkpoint refused, 5 the run dir refused, 6 a storage error (disk full, read-only); one line on stderr.
train.debug's injected crash exits with EXIT_INJECTED_CRASH (17). Under `python -m launch` (which sets
DIFFV2_EXIT_FILE), rank 0 also records its code there: torchrun itself exits 1 whatever a worker's code was.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from conf import register_configs, validated
from data.credentials import redact, refuse_in_args, refuse_in_config
from errors import EXIT_FILE_ENV, ConfigError, ProjectError, UnknownConfigKey, report_and_exit

EXIT_BAD_KEY = UnknownConfigKey.exit_code
EXIT_BAD_VALUE = ConfigError.exit_code


def _is_rank0() -> bool:
    return int(os.environ.get("RANK", 0)) == 0


def record_exit_code(code: int) -> None:
    """Rank 0 writes `code` to $DIFFV2_EXIT_FILE when a launcher asked for it."""
    path = os.environ.get(EXIT_FILE_ENV)
    if path and _is_rank0():
        Path(path).write_text(f"{code}\n")


def _fail(err: ProjectError) -> None:
    record_exit_code(err.exit_code)
    err.args = (redact(str(err)),)
    report_and_exit(err, quiet=not _is_rank0())


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def _main(cfg: DictConfig) -> None:
    from train.run import run_training

    try:
        try:
            run_cfg = validated(cfg, world_size=int(os.environ.get("WORLD_SIZE", 1)))
        except ProjectError:
            raise
        except ValueError as err:  # the model's own checks (model/config.py raises plain ValueError)
            raise ConfigError(str(err)) from err
        refuse_in_config(OmegaConf.to_container(cfg, resolve=True))
        config_yaml = redact(OmegaConf.to_yaml(cfg, resolve=True))
        run_training(run_cfg, config_yaml)
    except ProjectError as err:
        _fail(err)
    record_exit_code(0)


def main() -> None:
    register_configs()
    try:  # before Hydra, which would repeat a bad override's value in its own error
        refuse_in_args(sys.argv[1:])
    except ProjectError as err:
        _fail(err)
    # Hydra would create hydra.run.dir (${run.dir}) before any check ran: a refused run (a bad run.name,
    # a run dir in use) must leave nothing behind. The run creates its dir itself.
    if not any(arg.startswith("hydra.run.dir=") for arg in sys.argv[1:]):
        sys.argv.append("hydra.run.dir=.")
    _main()


if __name__ == "__main__":
    main()
