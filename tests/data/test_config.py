"""The data section checks itself at start-up: a value that cannot run is refused with errors.ConfigError
naming the field, before any data is read or prepared (before: some only failed at run time, mid-job)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conf import compose_run_config
from errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.cache.max_gb=0", "data.cache.max_gb=0"),
        ("data.cache.max_gb=-2", "data.cache.max_gb=-2"),
        ("data.cache.retries=0", "data.cache.retries=0"),
        ("data.cache.timeout_s=0", "data.cache.timeout_s=0"),
        ("data.cache.lookahead=-1", "data.cache.lookahead=-1"),
        ("data.num_workers=-1", "data.num_workers=-1"),
        ("data.prefetch=-1", "data.prefetch=-1"),
        ("data.shard_tokens=0", "data.shard_tokens=0"),
        ("data.val_fraction=1.5", "data.val_fraction=1.5"),
        ("++data.mixture={a:{dir:/x,weight:0}}", "data.mixture.a.weight=0"),
        ("++data.mixture={a:{dir:/x,weight:nan}}", "data.mixture.a.weight=nan"),
        (
            "++data.mixture={a:{dir:/x,weight:1},b:{dir:/y,weight:0.0001}}",
            "data.mixture.b.weight=0.0001 is below",
        ),
        ("++data.mixture={a:{dir:'s3://bucket/x',weight:1}}", "data.mixture.a.dir='s3://bucket/x'"),
    ],
)
def test_a_data_value_that_cannot_run_is_refused_when_the_config_is_composed(
    override: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        compose_run_config([override])


def test_the_default_data_config_and_the_mixture_preset_pass() -> None:
    compose_run_config([])
    compose_run_config(["data=mixture"])


def test_python_m_train_refuses_a_bad_cache_bound_with_exit_2_naming_it(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "train", "data.cache.max_gb=0", f"run.dir={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("config error: data.cache.max_gb=0")
    assert not (tmp_path / "run").exists()
