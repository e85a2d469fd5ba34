"""`python -m train` with a config that cannot run: it exits non-zero at start-up naming the key, before any
process group, dataset or run directory content. Run in-process (train.__main__.main with its argv), as the
CLI would run it, since a subprocess would add nothing here but interpreter start-up."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from train.__main__ import EXIT_BAD_KEY, EXIT_BAD_VALUE, main


@pytest.fixture
def train_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    """Runs `python -m train <overrides> run.dir=<tmp>/bad` in this process; returns (exit code, stderr)."""

    def run(*overrides: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["train", *overrides, f"run.dir={tmp_path / 'bad'}"])
        with pytest.raises(SystemExit) as exited:
            main()
        return exited.value.code, capsys.readouterr().err

    return run


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("trainer.max_stepz=3", "max_stepz"),
        ("trainer.max_steps=abc", "trainer.max_steps"),
        ("parallel=pipeline", "parallel"),
        ("parallel.tp=0", "parallel.tp"),
        ("trainer.global_batch_tokens=100", "trainer.global_batch_tokens"),
    ],
)
def test_invalid_override_exits_nonzero_naming_the_key(tmp_path, train_cli, override, named):
    code, stderr = train_cli(override)
    assert code != 0
    assert named in stderr
    assert "Traceback" not in stderr
    assert len(stderr.splitlines()) < 15
    assert not (tmp_path / "bad" / "checkpoints").exists()


@pytest.mark.parametrize(
    "override", ["+trainer.grad_clipp=0.5", "+optim.warmup=5", "+lr=1e-4", "+model.attention_impl=sdpa"]
)
def test_a_key_added_with_plus_that_the_schema_lacks_is_refused_naming_it(tmp_path, train_cli, override):
    code, stderr = train_cli(override)
    key = override[1:].split("=")[0]
    assert code == EXIT_BAD_KEY
    assert f"config error: {key} is not a config key" in stderr
    assert not (tmp_path / "bad" / "config.yaml").exists()  # never saved as if it applied


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=nan", "optim.lr=nan must be a finite number > 0"),
        ("optim.lr=inf", "optim.lr=inf must be a finite number > 0"),
        ("optim.beta1=-0.1", "optim.beta1=-0.1 must lie in [0, 1)"),
        ("optim.beta2=1.0", "optim.beta2=1.0 must lie in [0, 1)"),
        ("optim.eps=-1e-8", "optim.eps=-1e-08 must be a finite number > 0"),
        ("trainer.grad_clip=nan", "trainer.grad_clip=nan must be a finite number >= 0"),
        ("model.norm_eps=nan", "model.norm_eps=nan must be a finite number > 0"),
    ],
)
def test_non_finite_or_out_of_range_optimizer_values_stop_at_start_up(tmp_path, train_cli, override, message):
    code, stderr = train_cli(override)
    assert code == EXIT_BAD_VALUE
    assert message in stderr
    assert not (tmp_path / "bad" / "config.yaml").exists()


def test_experiment_groups_added_with_plus_still_compose():
    from conf import compose_run_config

    cfg = compose_run_config(["+experiment=diff_v2_vs_baseline"])
    assert cfg.wandb.tags == ["diff_v2_vs_baseline"]
