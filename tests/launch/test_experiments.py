"""Experiment recipes: the trials they sweep, each composed and validated as `python -m launch` would."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conf import compose
from launch.sweep import expand_trials, plan_sweep
from launch.validate import validate_config


def trials_of(experiment: str) -> list[list[str]]:
    cfg = compose([f"+experiment={experiment}"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    return expand_trials([f"+experiment={experiment}"], params)  # type: ignore[arg-type]


def composed(trial: list[str]):
    return compose(trial)


@pytest.mark.parametrize(
    ("experiment", "names"),
    [
        (
            "diff_v2_vs_baseline",
            [
                "0-attention-baseline",
                "1-attention-baseline_1p5h",
                "2-attention-baseline_2h",
                "3-attention-diff_v1",
                "4-attention-diff_v2",
            ],
        ),
        (
            "lr_stability",
            [
                "0-lr-0.0006_attention-baseline",
                "1-lr-0.0006_attention-diff_v2",
                "2-lr-0.001_attention-baseline",
                "3-lr-0.001_attention-diff_v2",
            ],
        ),
    ],
)
def test_experiment_sweeps_its_trials_and_each_validates_at_model_tiny(
    experiment: str, names: list[str], tmp_path: Path
) -> None:
    trials = trials_of(experiment)
    assert [t.name for t in plan_sweep(tmp_path, trials).trials] == names
    for trial in trials:
        cfg = composed(trial)
        assert cfg.model.name == "tiny"
        validate_config(cfg, gpus=0)


def test_diff_v2_vs_baseline_changes_only_the_attention() -> None:
    configs = [OmegaConf.to_container(composed(t), resolve=True) for t in trials_of("diff_v2_vs_baseline")]
    variants = [(c["model"]["attention"], c["model"]["baseline_head_factor"]) for c in configs]
    assert variants == [
        ("baseline", 1.0),
        ("baseline", 1.5),
        ("baseline", 2.0),
        ("diff_v1", 1.0),
        ("diff_v2", 1.0),
    ]
    # Same data, tokens, LR and seed in every trial: all but the attention fields, the run's name (and the
    # rendezvous id and paths derived from it) agree.
    for c in configs:
        c["model"] = {
            k: v for k, v in c["model"].items() if k not in ("attention", "variant", "baseline_head_factor")
        }
        (
            c["run"].pop("name"),
            c["run"].pop("dir"),
            c["launch"].pop("rdzv_id"),
            c["launch"]["slurm"].pop("folder"),
        )
    assert all(c == configs[0] for c in configs)
