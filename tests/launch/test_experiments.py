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


def names(values: dict[str, list[str]]) -> list[str]:
    """Trial names of a sweep over these keys (the first varies slowest), as launch names them."""
    import itertools

    combos = itertools.product(*values.values())
    keys = [k.rsplit(".", 1)[-1] for k in values]
    return [
        f"{i}-" + "_".join(f"{k}-{v}" for k, v in zip(keys, c, strict=True)) for i, c in enumerate(combos)
    ]


SEEDS = ["0", "1", "2"]
RECIPES = {
    "diff_v2_vs_baseline": {
        "seed": SEEDS,
        "attention": ["baseline", "baseline_1p5h", "baseline_2h", "diff_v1", "diff_v2"],
    },
    "ablations": {
        "seed": SEEDS,
        "attention": [
            "diff_v2",
            "diff_v2_cross_group",
            "diff_v2_no_lambda",
            "diff_v2_linear_lambda",
            "baseline_1p5h",
        ],
    },
    "moe_diff_v2_vs_baseline": {"seed": SEEDS, "attention": ["baseline", "baseline_1p5h", "diff_v2"]},
    "lr_stability": {
        "seed": SEEDS,
        "lr": ["0.003", "0.01", "0.03", "0.1"],
        "attention": ["baseline", "diff_v1", "diff_v2"],
    },
}


@pytest.mark.parametrize("experiment", sorted(RECIPES))
def test_experiment_sweeps_its_trials_over_seeds_and_each_validates_at_its_model(
    experiment: str, tmp_path: Path
) -> None:
    trials = trials_of(experiment)
    assert [t.name for t in plan_sweep(tmp_path, trials).trials] == names(RECIPES[experiment])
    for trial in trials[:: len(SEEDS)]:
        cfg = composed(trial)
        assert cfg.model.name == ("mini_moe" if experiment.startswith("moe_") else "tiny")
        validate_config(cfg, gpus=0)


def test_diff_v2_vs_baseline_changes_only_the_attention() -> None:
    configs = [OmegaConf.to_container(composed(t), resolve=True) for t in trials_of("diff_v2_vs_baseline")]
    configs = [c for c in configs if c["run"]["seed"] == 0]
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
