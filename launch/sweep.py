"""Hydra multirun sweeps: one torchrun job per trial, named after its overrides, grouped in wandb by sweep.

A Hydra Callback sees the whole sweep. At the start it expands the trials, names them and validates every
one before the first process starts; at the end it waits for SLURM jobs still running and prints the table.
Trials run in this process one after another (Hydra's basic launcher); each is its own torchrun child.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from errors import ConfigError, ProjectError, report_and_exit
from launch.command import is_launch_override, override_key
from launch.summary import format_table, summarize


@dataclass
class Trial:
    """One job of a sweep."""

    num: int
    """Hydra's job number (0-based, in sweep order)."""
    overrides: list[str]
    """The trial's task overrides, as Hydra hands them to the job."""
    name: str
    """Run name: the job number and the swept values, e.g. 1-attention-diff_v2_lr-0.0003."""
    run_dir: Path
    """<sweep dir>/<name>."""
    group: str
    """wandb group: the sweep dir's name."""

    def extra_overrides(self) -> list[str]:
        """What the launcher adds to the trainer's overrides for this trial."""
        return [
            f"run.name={quote(self.name)}",
            f"run.dir={quote(str(self.run_dir))}",
            f"wandb.group={quote(self.group)}",
        ]


@dataclass
class SweepState:
    """The sweep in flight, shared by the callback and the task function (same process)."""

    sweep_dir: Path
    trials: list[Trial]
    exit_codes: dict[int, int] = field(default_factory=dict)
    """Job number -> torchrun's exit code, once known."""
    pending: dict[int, Callable[[], int]] = field(default_factory=dict)
    """Job number -> a wait function for SLURM jobs submitted but not finished."""


STATE: SweepState | None = None


def expand_trials(raw_overrides: Sequence[str], params: dict[str, str]) -> list[list[str]]:
    """The trials Hydra's basic sweeper runs, in its order: sweeper params first, then the command line."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [f"{k}={v}" for k, v in params.items()] + list(raw_overrides)
    parsed = OverridesParser.create().parse_overrides(args)
    (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return batch


def swept_keys(trials: Sequence[Sequence[str]]) -> list[str]:
    """Keys whose value differs between trials, in override order (launch.* excluded: it names no run)."""
    keys: dict[str, set[str]] = {}
    for trial in trials:
        for o in trial:
            if not is_launch_override(o):
                keys.setdefault(override_key(o), set()).add(o.split("=", 1)[-1])
    return [k for k, values in keys.items() if len(values) > 1]


def _short(key: str, keys: Sequence[str]) -> str:
    """`optim.lr` -> `lr`, unless another swept key ends the same way."""
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in keys) == 1 else key


def trial_name(num: int, overrides: Sequence[str], keys: Sequence[str]) -> str:
    """`<num>-<key>-<value>_...` over the swept keys, safe as a directory and wandb run name."""
    values = {override_key(o): o.split("=", 1)[-1] for o in overrides}
    parts = [f"{_short(k, keys)}-{values[k]}" for k in keys if k in values]
    name = f"{num}-" + "_".join(parts) if parts else str(num)
    return re.sub(r"[^A-Za-z0-9._+-]", "-", name)


def quote(value: str) -> str:
    """A string as a Hydra override value: bare when the grammar allows, else single-quoted."""
    if re.fullmatch(r"[A-Za-z0-9_./+-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def plan_sweep(sweep_dir: Path, trials: Sequence[Sequence[str]]) -> SweepState:
    keys = swept_keys(trials)
    group = sweep_dir.name
    return SweepState(
        sweep_dir=sweep_dir,
        trials=[
            Trial(i, list(t), (name := trial_name(i, t, keys)), sweep_dir / name, group)
            for i, t in enumerate(trials)
        ],
    )


def trial_for(num: int, overrides: Sequence[str], sweep_dir: str) -> Trial:
    """The planned trial for this job; without a plan (another launcher), a name from all its overrides."""
    if STATE is not None and num < len(STATE.trials) and STATE.trials[num].overrides == list(overrides):
        return STATE.trials[num]
    keys = [override_key(o) for o in overrides if not is_launch_override(o)]
    name = trial_name(num, overrides, keys)
    return Trial(num, list(overrides), name, Path(sweep_dir) / name, Path(sweep_dir).name)


def exit_code() -> int:
    """The first non-zero exit code of the sweep's trials, else 0."""
    if STATE is None:
        return 0
    return next((rc for _, rc in sorted(STATE.exit_codes.items()) if rc != 0), 0)


class SweepCallback(Callback):
    """Validates and names all trials before the first starts; prints the summary table at the end."""

    def on_multirun_start(self, config: DictConfig, config_name: str | None = None, **kwargs: Any) -> None:
        # Hydra turns a callback's exception into a warning and carries on: every failure here must exit.
        try:
            self._plan_and_validate(config)
        except ProjectError as exc:
            report_and_exit(exc)
        except Exception as exc:  # Hydra's compose errors (a trial's wrong type)
            report_and_exit(ConfigError(str(exc)))

    @staticmethod
    def _plan_and_validate(config: DictConfig) -> None:
        global STATE
        from conf import compose
        from data.credentials import refuse_in_config
        from launch.nodes import gpus_present
        from launch.validate import validate_config

        raw = OmegaConf.to_container(config.hydra.overrides.task)
        params = config.hydra.sweeper.get("params")
        params = OmegaConf.to_container(params) if params is not None else {}
        # Before Hydra writes multirun.yaml into the sweep dir: a recipe's credential URL must not land there.
        refuse_in_config({"hydra.sweeper.params": params})
        STATE = plan_sweep(Path(config.hydra.sweep.dir), expand_trials(raw, params))  # type: ignore[arg-type]
        gpus = gpus_present()
        for trial in STATE.trials:
            try:
                cfg = compose([*trial.overrides, *trial.extra_overrides()])
                refuse_in_config(OmegaConf.to_container(cfg, resolve=True))
                validate_config(cfg, gpus=gpus)
            except Exception as exc:  # Hydra's compose errors and our ValueErrors alike: stop before any job.
                # Hydra's message says which override; its cause says which type was expected.
                cause = f"\n{exc.__cause__}" if exc.__cause__ is not None else ""
                raise ValueError(f"trial {trial.num} ({' '.join(trial.overrides)}): {exc}{cause}") from exc
        group = STATE.trials[0].group
        print(
            f"[launch] sweep {STATE.sweep_dir}: {len(STATE.trials)} trials, wandb group {group}", flush=True
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if STATE is None:
            return
        for num, wait in sorted(STATE.pending.items()):
            STATE.exit_codes[num] = wait()
        STATE.pending.clear()
        rows = [summarize(t.run_dir) for t in STATE.trials]
        for row, trial in zip(rows, STATE.trials, strict=True):
            row.exit_code = STATE.exit_codes.get(trial.num, row.exit_code)
        print(f"\nSweep {STATE.sweep_dir} (wandb group {STATE.trials[0].group if STATE.trials else '-'})")
        print(format_table(rows), flush=True)
