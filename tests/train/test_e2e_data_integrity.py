"""`python -m train` on a dataset whose shard was altered after prepare stops at start-up naming the shard."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]


def test_train_on_a_shard_with_a_flipped_bit_exits_2_naming_it(
    tmp_path: Path, jobs: object, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIFFV2_VERIFY_CACHE", str(tmp_path / "verified"))  # first use on this machine
    dataset = Path(shutil.copytree(data_root / "stdlib_small-bpe2048", tmp_path / "data"))
    shard = dataset / "train_000001.bin"
    raw = bytearray(shard.read_bytes())
    raw[64 + 2 * 1000] ^= 1  # the low bit of token 1000: still a valid id, so only the checksum can tell
    shard.write_bytes(bytes(raw))

    proc = jobs.train(tmp_path / "run", f"data.dir={dataset}", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"dataset unavailable: {shard}: sha256 " in proc.stderr
    assert "the shard was altered or damaged after prepare" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
