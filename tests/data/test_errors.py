"""Bad input gets an error naming the file and what was expected, and nothing already written changes."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from data.config import DataConfig
from data.loader import TokenLoader
from data.prepare import MANIFEST, ensure_dataset, prepare_dataset
from data.shards import HEADER_BYTES, DatasetError, dtype_for_vocab, manifest_fingerprint, write_shard
from data.spec import LoaderSpec


def open_train(root: Path) -> TokenLoader:
    return TokenLoader(root, LoaderSpec("train", 64, 2, 0))


def first_shard(root: Path) -> Path:
    return root / json.loads((root / MANIFEST).read_text())["splits"]["train"]["shards"][0]["file"]


def edit_manifest(root: Path, edit: object) -> None:
    """Edits the manifest and reseals its fingerprint, as a consistent but wrong manifest would be."""
    manifest = json.loads((root / MANIFEST).read_text())
    edit(manifest)
    manifest["fingerprint"] = manifest_fingerprint(manifest)
    (root / MANIFEST).write_text(json.dumps(manifest))


def patch(path: Path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


def assert_fails_and_changes_nothing(root: Path, snapshot: object, pattern: str) -> None:
    before = snapshot(root)
    with pytest.raises(DatasetError, match=pattern):
        open_train(root)
    assert snapshot(root) == before


def test_missing_dataset_dir_says_to_run_prepare(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetError, match=r"nope: dataset directory does not exist; run `python -m data\.prepare`"
    ):
        open_train(tmp_path / "nope")


def test_missing_manifest_names_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"manifest\.json: manifest is missing"):
        open_train(tmp_path)


def test_missing_manifest_without_prepare_if_missing_is_an_error(
    prepared: DataConfig, tmp_path: Path
) -> None:
    cfg = DataConfig(dir=str(tmp_path / "absent"), prepare_if_missing=False)
    with pytest.raises(
        DatasetError, match=r"absent/manifest\.json is missing and data\.prepare_if_missing=false"
    ):
        ensure_dataset(cfg)
    assert ensure_dataset(prepared) == Path(prepared.dir) / MANIFEST


def test_empty_corpus_is_an_error_and_creates_nothing(tmp_path: Path, make_config: object) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"{i}.txt").write_text("")
    cfg = make_config(corpus, tmp_path / "out")
    with pytest.raises(DatasetError, match=r"the source .*'kind': 'text'.* yielded no documents"):
        prepare_dataset(cfg)
    assert not (tmp_path / "out").exists()


def test_wrong_magic_names_the_shard(prepared_copy: Path, dir_snapshot: object) -> None:
    patch(first_shard(prepared_copy), 0, b"NOTASHRD")
    assert_fails_and_changes_nothing(
        prepared_copy,
        dir_snapshot,
        r"train_000000\.bin: not a diffv2 token shard \(magic b'NOTASHRD', expected",
    )


def test_wrong_version_names_the_shard(prepared_copy: Path, dir_snapshot: object) -> None:
    patch(first_shard(prepared_copy), 8, struct.pack("<I", 99))
    assert_fails_and_changes_nothing(
        prepared_copy, dir_snapshot, r"train_000000\.bin: shard format version 99, this code reads version 1"
    )


def test_truncated_payload_names_the_shard_and_sizes(prepared_copy: Path, dir_snapshot: object) -> None:
    shard = first_shard(prepared_copy)
    shard.write_bytes(shard.read_bytes()[:-10])
    assert_fails_and_changes_nothing(
        prepared_copy,
        dir_snapshot,
        r"train_000000\.bin: truncated payload: the header announces 20000 tokens x 2 bytes \(40064 bytes",
    )


def test_truncated_header_names_the_shard(prepared_copy: Path, dir_snapshot: object) -> None:
    shard = first_shard(prepared_copy)
    shard.write_bytes(shard.read_bytes()[:20])
    assert_fails_and_changes_nothing(prepared_copy, dir_snapshot, r"train_000000\.bin: truncated header")


def test_manifest_disagreeing_with_a_shard_names_both(prepared_copy: Path, dir_snapshot: object) -> None:
    def one_token_fewer(manifest: dict) -> None:
        manifest["splits"]["train"]["shards"][0]["tokens"] -= 1
        manifest["splits"]["train"]["tokens"] -= 1

    edit_manifest(prepared_copy, one_token_fewer)
    assert_fails_and_changes_nothing(
        prepared_copy,
        dir_snapshot,
        r"train_000000\.bin: shard header token count is 20000 but .*manifest\.json expects 19999",
    )


def test_shard_from_another_tokenizer_is_rejected(prepared_copy: Path, dir_snapshot: object) -> None:
    patch(first_shard(prepared_copy), 32, b"\xff" * 16)
    assert_fails_and_changes_nothing(
        prepared_copy, dir_snapshot, r"train_000000\.bin: shard header tokenizer fingerprint is ffff"
    )


def test_missing_shard_names_it(prepared_copy: Path, dir_snapshot: object) -> None:
    first_shard(prepared_copy).unlink()
    assert_fails_and_changes_nothing(prepared_copy, dir_snapshot, r"train_000000\.bin: shard file is missing")


def test_vocab_too_large_for_the_shard_dtype_names_the_shard(
    prepared_copy: Path, dir_snapshot: object
) -> None:
    # A uint16 shard claiming a 70k vocabulary (ids above 65535 cannot be stored in it).
    patch(first_shard(prepared_copy), 24, struct.pack("<Q", 70_000))
    edit_manifest(prepared_copy, lambda m: m["tokenizer"].update(n_vocab=70_000))
    assert_fails_and_changes_nothing(
        prepared_copy,
        dir_snapshot,
        r"train_000000\.bin: vocabulary of 70000 tokens is too large for uint16 tokens.*expected uint32",
    )


def test_writer_picks_uint32_above_65536_and_refuses_ids_outside_the_vocab(tmp_path: Path) -> None:
    assert dtype_for_vocab(65_536) == np.uint16 and dtype_for_vocab(65_537) == np.uint32
    with pytest.raises(DatasetError, match=r"vocabulary of 4294967297 tokens is too large"):
        dtype_for_vocab(2**32 + 1)
    path = tmp_path / "s.bin"
    write_shard(path, np.array([1, 70_000], dtype=np.uint32), 70_001, "ab" * 32)
    assert path.stat().st_size == HEADER_BYTES + 2 * 4
    with pytest.raises(DatasetError, match=r"bad\.bin: token id 512 is outside the vocabulary of 512 tokens"):
        write_shard(tmp_path / "bad.bin", np.array([3, 512], dtype=np.uint32), 512, "ab" * 32)
    assert not (tmp_path / "bad.bin").exists()


def test_split_too_small_for_one_sequence_names_the_manifest(prepared: DataConfig) -> None:
    with pytest.raises(
        DatasetError, match=r"manifest\.json: the val split holds \d+ tokens, too few for one sequence"
    ):
        TokenLoader(prepared.dir, LoaderSpec("val", 10_000_000, 1, 0))


def test_ensure_dataset_refuses_a_dataset_prepared_with_other_settings(prepared: DataConfig) -> None:
    assert ensure_dataset(prepared) == Path(prepared.dir) / MANIFEST
    fewer_docs = dataclasses.replace(prepared, source=dataclasses.replace(prepared.source, max_docs=10))
    with pytest.raises(
        DatasetError, match=r"manifest\.json was written with other settings \(differing: \['source'\]"
    ):
        ensure_dataset(fewer_docs)
    bigger_vocab = dataclasses.replace(
        prepared, tokenizer=dataclasses.replace(prepared.tokenizer, vocab_size=1024)
    )
    with pytest.raises(DatasetError, match=r"differing: \['n_vocab'\]"):
        ensure_dataset(bigger_vocab)
