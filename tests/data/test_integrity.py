"""Shard payloads are checked against the manifest before first use, once per machine; a manifest that
lists fewer shards than prepare wrote, or disagrees with itself, is refused. Each error names the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.loader import TokenLoader
from data.shards import HEADER_BYTES, MANIFEST, DatasetError, file_sha256, manifest_fingerprint
from data.spec import LoaderSpec


def open_train(root: Path, **kwargs: object) -> TokenLoader:
    return TokenLoader(root, LoaderSpec("train", 64, 2, 0, **kwargs))


def train_shard(root: Path, index: int) -> Path:
    return root / f"train_{index:06d}.bin"


def set_token(path: Path, index: int, value: int) -> None:
    """Overwrites one uint16 token of a shard's payload in place."""
    with open(path, "r+b") as f:
        f.seek(HEADER_BYTES + 2 * index)
        f.write(int(value).to_bytes(2, "little"))


def read_token(path: Path, index: int) -> int:
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES + 2 * index)
        return int.from_bytes(f.read(2), "little")


def rewrite_manifest(root: Path, edit: object) -> None:
    """Edits the manifest and reseals its fingerprint: a consistent manifest that is still wrong."""
    manifest = json.loads((root / MANIFEST).read_text())
    edit(manifest)
    manifest["fingerprint"] = manifest_fingerprint(manifest)
    (root / MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty verification cache: this test's loader is the first use of the shards on the machine."""
    cache = tmp_path / "verified"
    monkeypatch.setenv("DIFFV2_VERIFY_CACHE", str(cache))
    return cache


def test_flipped_low_bit_in_a_shard_fails_naming_it_before_any_batch(
    prepared_copy: Path, fresh_cache: Path, dir_snapshot: object
) -> None:
    shard = train_shard(prepared_copy, 3)
    set_token(shard, 1234, read_token(shard, 1234) ^ 1)  # still a valid id: only the checksum can tell
    before = dir_snapshot(prepared_copy)
    for _ in range(2):  # a failed check is not remembered as a pass: the second open fails the same way
        with pytest.raises(
            DatasetError,
            match=r"train_000003\.bin: sha256 \w+\.\.\. does not match \w+\.\.\. recorded in "
            r".*manifest\.json; the shard was altered",
        ):
            open_train(prepared_copy)
    assert dir_snapshot(prepared_copy) == before


def test_verification_is_remembered_per_machine_until_the_shard_changes(
    prepared_copy: Path, fresh_cache: Path
) -> None:
    n_train = len(list(prepared_copy.glob("train_*.bin")))
    open_train(prepared_copy).close()
    stamps = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in fresh_cache.iterdir()}
    assert len(stamps) == n_train  # one per train shard; the val split was not opened
    assert all(content.startswith(b"verified ") for content, _ in stamps.values())

    open_train(prepared_copy).close()  # cached: every stamp is read, none rewritten
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in fresh_cache.iterdir()} == stamps

    # Damage put back under the old mtime still counts as a change (the stamp also keys on ctime and inode).
    shard = train_shard(prepared_copy, 0)
    mtime = shard.stat().st_mtime_ns
    set_token(shard, 5, read_token(shard, 5) ^ 1)
    os.utime(shard, ns=(mtime, mtime))
    with pytest.raises(DatasetError, match=r"train_000000\.bin: sha256 .* does not match"):
        open_train(prepared_copy)


def test_token_beyond_the_vocabulary_fails_naming_the_shard_with_and_without_verification(
    prepared_copy: Path, fresh_cache: Path
) -> None:
    # A shard whose checksum the manifest agrees with but which holds an id the tokenizer does not have.
    shard = train_shard(prepared_copy, 2)
    set_token(shard, 7, 512)
    rewrite_manifest(
        prepared_copy, lambda m: m["splits"]["train"]["shards"][2].update(sha256=file_sha256(shard))
    )
    with pytest.raises(
        DatasetError, match=r"train_000002\.bin: token id 512 at token 7 is outside the vocabulary of 512"
    ):
        open_train(prepared_copy)

    # Unverified, the batch that reads it fails the same way instead of in the embedding, naming no file.
    loader = TokenLoader(
        prepared_copy, LoaderSpec("train", 64, 2, 0, shuffle=False, prefetch=0, verify=False)
    )
    window = (2 * 20_000 + 7) // 64
    with pytest.raises(
        DatasetError, match=r"train_000002\.bin: token id 512 at token 7 is outside the vocabulary of 512"
    ):
        loader.batch_at(window)
    assert np.all(loader.batch_at(0)[0].numpy() < 512)


def test_manifest_listing_fewer_shards_than_prepare_wrote_is_refused(
    prepared_copy: Path, fresh_cache: Path, dir_snapshot: object
) -> None:
    def keep_two(manifest: dict) -> None:
        train = manifest["splits"]["train"]
        train["shards"] = train["shards"][:2]
        train["tokens"] = sum(s["tokens"] for s in train["shards"])

    manifest = json.loads((prepared_copy / MANIFEST).read_text())
    keep_two(manifest)
    (prepared_copy / MANIFEST).write_text(json.dumps(manifest))  # cut by hand: the fingerprint no longer fits
    with pytest.raises(
        DatasetError, match=r"manifest\.json: its content does not match its fingerprint .* after prepare"
    ):
        open_train(prepared_copy)

    rewrite_manifest(prepared_copy, keep_two)  # cut and resealed: the unlisted files still give it away
    before = dir_snapshot(prepared_copy)
    n_train = len(list(prepared_copy.glob("train_*.bin")))
    with pytest.raises(
        DatasetError,
        match=rf"manifest\.json: lists 2 train shards but the directory also holds {n_train - 2} it does "
        r"not list \(train_000002\.bin, train_000003\.bin, train_000004\.bin, \.\.\.\)",
    ):
        open_train(prepared_copy)
    assert dir_snapshot(prepared_copy) == before


def test_the_read_path_imports_neither_the_writer_nor_the_tokenizer_libraries() -> None:
    # A fresh interpreter: this one has imported everything already. A training machine reading shards needs
    # none of prepare's code or dependencies, and cannot run it by accident.
    code = "import sys, data.dataset; print(sorted(sys.modules))"
    modules = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in ("data.prepare", "data.writer", "data.tokenizer", "tiktoken", "tokenizers"):
        assert f"'{name}'" not in modules
    assert "'data.verify'" in modules


def test_data_bench_reports_loader_start_up_with_and_without_verification(
    capsys: pytest.CaptureFixture, fresh_cache: Path
) -> None:
    from bench.data import main as bench_main

    bench_main(["--only-startup", "--synthetic-mtokens", "4", "--startup-repeats", "1"])
    out = capsys.readouterr().out
    assert "loader start-up, synthetic random tokens: train split 4.0M tokens in 2 shards (8 MB)" in out
    assert "verify off:" in out and "verify, first use on this machine:" in out and "verify, cached:" in out
    assert os.environ["DIFFV2_VERIFY_CACHE"] == str(fresh_cache)  # the bench put the caller's cache back
