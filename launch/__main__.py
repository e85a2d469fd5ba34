"""`python -m launch <train overrides> [launch=local|multinode|slurm] [launch.*=...]`; `--multirun` sweeps.

A Hydra app over the same conf/config.yaml as `python -m train`, so every override is checked against the
same schema before any process starts; the overrides (minus launch.*) are forwarded to torchrun's `-m train`.
"""

from __future__ import annotations

import signal
import sys

import hydra
from omegaconf import DictConfig

from conf import register_configs
from data.credentials import RedactedStream, refuse_in_args
from errors import ProjectError, report_and_exit
from launch import app, sweep
from launch.process import LaunchStopped

MULTIRUN_FLAGS = ("-m", "--multirun", "hydra.mode=MULTIRUN")


def hydra_args(argv: list[str]) -> list[str]:
    """Adds launcher plumbing to Hydra's command line (a user's own hydra.* settings win).

    - hydra.run.dir=. : Hydra would create run.dir before the task runs, so a launch refused for bad input
      would leave an empty run dir behind; the agent creates it when torchrun is about to start.
    - multirun: the SweepCallback names and validates all trials up front and prints the table at the end;
      hydra.sweep.subdir=. : each trial's run dir is <sweep dir>/<trial name>, made by the agent, so Hydra's
      numbered job dirs would stay empty.
    """

    def unset(key: str) -> bool:
        return not any(a.startswith(f"{key}=") for a in argv)

    if not any(a in MULTIRUN_FLAGS for a in argv):
        return [*argv, "hydra.run.dir=."] if unset("hydra.run.dir") else argv
    extra = ["+hydra.callbacks.diffv2_sweep._target_=launch.sweep.SweepCallback"]
    if unset("hydra.sweep.subdir"):
        extra.append("hydra.sweep.subdir=.")
    return [*argv, *extra]


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def _main(cfg: DictConfig) -> int:
    return app.launch_task(cfg)


def main() -> None:
    """Every line this process prints (its own messages, Hydra's, the torchrun command) passes through
    data/credentials.py's redaction: a credential URL in a config file is found only after composing."""
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactedStream(out), RedactedStream(err)
    try:
        _launch()
    finally:
        sys.stdout, sys.stderr = out, err


def _launch() -> None:
    register_configs()
    try:  # before Hydra, which would repeat a bad override's value in its own error
        refuse_in_args(sys.argv[1:])
    except ProjectError as err:
        report_and_exit(err)
    sys.argv = [sys.argv[0], *hydra_args(sys.argv[1:])]
    try:
        _main()
    except (KeyboardInterrupt, LaunchStopped) as exc:
        signum = exc.signum if isinstance(exc, LaunchStopped) else signal.SIGINT
        print(
            f"launch: stopped by {signal.Signals(signum).name} (SLURM jobs already submitted keep running)",
            file=sys.stderr,
        )
        sys.exit(128 + signum)
    codes = [*app.EXIT_CODES, sweep.exit_code()]
    sys.exit(next((rc for rc in codes if rc != 0), 0))


if __name__ == "__main__":
    main()
