"""Sweep planning: the trials Hydra will run, which keys vary, and the names and dirs they get."""

from __future__ import annotations

from pathlib import Path

from launch.sweep import expand_trials, plan_sweep, quote, swept_keys, trial_name


def test_trials_are_the_cartesian_product_in_hydra_order() -> None:
    trials = expand_trials(["optim.lr=3e-4,1e-3", "attention=baseline,diff_v2", "model.d_model=64"], {})
    assert len(trials) == 4
    assert trials[0] == ["optim.lr=0.0003", "attention=baseline", "model.d_model=64"]
    assert trials[3] == ["optim.lr=0.001", "attention=diff_v2", "model.d_model=64"]


def test_sweeper_params_come_before_command_line_sweeps() -> None:
    trials = expand_trials(["trainer.seed=1,2"], {"attention": "baseline,diff_v2"})
    assert [t[0] for t in trials] == ["attention=baseline", "attention=baseline", "attention=diff_v2"] + [
        "attention=diff_v2"
    ]


def test_only_varying_keys_name_a_trial() -> None:
    trials = expand_trials(["optim.lr=3e-4,1e-3", "attention=baseline,diff_v2", "model.d_model=64"], {})
    assert swept_keys(trials) == ["optim.lr", "attention"]
    assert trial_name(2, trials[2], swept_keys(trials)) == "2-lr-0.001_attention-baseline"


def test_launch_keys_never_name_a_trial() -> None:
    trials = expand_trials(["launch.max_restarts=0,1"], {})
    assert swept_keys(trials) == []
    assert trial_name(1, trials[1], []) == "1"


def test_same_leaf_keys_keep_their_full_path() -> None:
    keys = ["optim.lr", "other.lr"]
    assert trial_name(0, ["optim.lr=1", "other.lr=2"], keys) == "0-optim.lr-1_other.lr-2"


def test_trials_get_distinct_dirs_under_the_sweep_and_one_group(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "my_sweep"
    state = plan_sweep(sweep_dir, expand_trials(["optim.lr=3e-4,1e-3", "attention=baseline,diff_v2"], {}))
    dirs = [t.run_dir for t in state.trials]
    assert len(set(dirs)) == 4 and all(d.parent == sweep_dir for d in dirs)
    assert {t.group for t in state.trials} == {"my_sweep"}
    assert state.trials[1].extra_overrides() == [
        "run.name=1-lr-0.0003_attention-diff_v2",
        f"run.dir={sweep_dir}/1-lr-0.0003_attention-diff_v2",
        "wandb.group=my_sweep",
    ]


def test_values_outside_the_bare_grammar_are_quoted() -> None:
    assert quote("runs/a-b_c.1") == "runs/a-b_c.1"
    assert quote("/tmp/x y") == "'/tmp/x y'"
    assert quote("it's") == "'it\\'s'"
