"""prepare: text -> shards -> loader gives back exactly the documents' tokens; shards do not depend on the
worker count; a killed prepare rerun gives byte-identical files; the Hydra CLI works."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data.config import DataConfig, SourceConfig, TokenizerConfig
from data.loader import TokenLoader
from data.prepare import MANIFEST, PROGRESS, is_validation_doc, prepare_dataset
from data.shards import DatasetError, file_sha256, read_header
from data.spec import LoaderSpec
from data.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[2]


def expected_stream(cfg: DataConfig, docs: list[str], split: str) -> list[int]:
    """The split's documents encoded one by one, each followed by <|endoftext|>."""
    enc = load_tokenizer(cfg.tokenizer)
    out: list[int] = []
    for i, doc in enumerate(docs):
        if is_validation_doc(i, cfg.val_fraction) == (split == "val"):
            out += enc.encode_ordinary(doc) + [enc.eot_token]
    return out


@pytest.mark.parametrize("split", ["train", "val"])
def test_loader_returns_exactly_the_documents_tokens_with_separators(
    prepared: DataConfig, corpus: tuple[Path, list[str]], split: str
) -> None:
    stream = np.array(expected_stream(prepared, corpus[1], split))
    seq_len = 64
    loader = TokenLoader(prepared.dir, LoaderSpec(split, seq_len, micro_batch=4, seed=0, shuffle=False))
    assert loader.num_sequences == (len(stream) - 1) // seq_len
    steps = -(-loader.num_sequences // 4)
    rows = np.concatenate([x.numpy() for _, (x, _) in zip(range(steps), loader, strict=False)])
    loader.close()
    rows = rows[: loader.num_sequences]  # the last step wraps into the next epoch
    np.testing.assert_array_equal(rows.reshape(-1), stream[: loader.num_sequences * seq_len])
    enc = load_tokenizer(prepared.tokenizer)
    separators = int((stream == enc.eot_token).sum())
    assert separators == sum(
        is_validation_doc(i, prepared.val_fraction) == (split == "val") for i in range(len(corpus[1]))
    )
    # Every document comes back as text, the unicode ones included.
    text = enc.decode(stream.tolist())
    for i, doc in enumerate(corpus[1]):
        if is_validation_doc(i, prepared.val_fraction) == (split == "val"):
            assert doc + "<|endoftext|>" in text


def test_manifest_lists_every_shard_with_its_token_count_and_checksum(prepared: DataConfig) -> None:
    root = Path(prepared.dir)
    manifest = json.loads((root / MANIFEST).read_text())
    assert manifest["dtype"] == "uint16" and manifest["tokenizer"]["n_vocab"] == 512
    assert manifest["tokenizer"]["path"] == "tokenizer"
    train = manifest["splits"]["train"]
    assert len(train["shards"]) > 5 and manifest["splits"]["val"]["tokens"] > 0
    for entry in train["shards"][:-1]:
        assert entry["tokens"] == prepared.shard_tokens
    for split in manifest["splits"].values():
        assert split["tokens"] == sum(entry["tokens"] for entry in split["shards"])
        for entry in split["shards"]:
            assert file_sha256(root / entry["file"]) == entry["sha256"]
            assert read_header(root / entry["file"]).num_tokens == entry["tokens"]
    assert not (root / PROGRESS).exists()
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []


def test_shards_do_not_depend_on_the_number_of_workers(
    prepared: DataConfig, make_config: object, dir_snapshot: object, tmp_path: Path
) -> None:
    corpus_dir = Path(prepared.source.paths[0]).parent
    single = make_config(corpus_dir, tmp_path / "single", num_workers=1)
    prepare_dataset(single)
    assert dir_snapshot(tmp_path / "single") == dir_snapshot(Path(prepared.dir))


def test_rerun_of_a_finished_prepare_changes_nothing(prepared: DataConfig, dir_snapshot: object) -> None:
    before = dir_snapshot(Path(prepared.dir))
    mtimes = {p: p.stat().st_mtime_ns for p in Path(prepared.dir).iterdir()}
    prepare_dataset(prepared)
    assert dir_snapshot(Path(prepared.dir)) == before
    assert {p: p.stat().st_mtime_ns for p in Path(prepared.dir).iterdir()} == mtimes


def test_rerun_with_other_settings_is_refused_and_touches_nothing(
    prepared_copy: Path, prepared: DataConfig, make_config: object, dir_snapshot: object
) -> None:
    before = dir_snapshot(prepared_copy)
    cfg = make_config(Path(prepared.source.paths[0]).parent, prepared_copy, shard_tokens=10_000)
    with pytest.raises(
        DatasetError, match=r"manifest\.json was written with other settings.*\['shard_tokens'\]"
    ):
        prepare_dataset(cfg)
    assert dir_snapshot(prepared_copy) == before


def _cli(out: Path, corpus_dir: Path, shard_tokens: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "data.prepare",
        "data=local_text",
        f"data.dir={out}",
        f"data.source.paths=[{corpus_dir}/*.txt]",
        "data.tokenizer.vocab_size=512",
        f"data.shard_tokens={shard_tokens}",
        "data.val_fraction=0.1",
        "data.num_workers=2",
    ]


@pytest.mark.slow  # two `python -m data.prepare` processes, one killed mid-run: ~20 s
def test_killed_cli_prepare_rerun_gives_byte_identical_shards_and_manifest(
    tmp_path: Path, make_corpus: object, make_config: object, dir_snapshot: object
) -> None:
    corpus_dir = tmp_path / "corpus"
    make_corpus(corpus_dir, 150)
    shard_tokens = 5000
    reference = tmp_path / "reference"
    prepare_dataset(make_config(corpus_dir, reference, shard_tokens=shard_tokens, name="local_text"))
    n_train = len(json.loads((reference / MANIFEST).read_text())["splits"]["train"]["shards"])

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        _cli(out, corpus_dir, shard_tokens),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while len(list(out.glob("train_*.bin"))) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, "prepare finished before it could be interrupted; enlarge the corpus"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Half-way: some shards, no manifest, and every visible shard is whole (temporaries are hidden).
    visible = sorted(out.glob("*_*.bin"))
    assert 5 <= len(visible) < n_train and not (out / MANIFEST).exists()
    for shard in visible:
        read_header(shard)

    rerun = subprocess.run(
        _cli(out, corpus_dir, shard_tokens), cwd=REPO, env=env, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "prepared" in rerun.stdout
    assert dir_snapshot(out) == dir_snapshot(reference)


def test_cli_reports_a_bad_source_as_one_line_naming_the_pattern(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        _cli(tmp_path / "out", tmp_path / "nowhere", 1000), cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "dataset unavailable: data.source.paths: pattern" in result.stderr
    assert "nowhere/*.txt" in result.stderr
    assert not (tmp_path / "out").exists()


def _jsonl_corpus(root: Path, docs: list[str], broken: bool) -> DataConfig:
    """Two jsonl files; with `broken`, the second one ends in a line that is not JSON. One worker: it reads
    one batch ahead, so the shards of the text before the bad line get written (2 workers read further)."""
    root.mkdir(parents=True, exist_ok=True)
    half = len(docs) // 2
    for name, part in (("a.jsonl", docs[:half]), ("b.jsonl", docs[half:])):
        lines = [json.dumps({"text": d}) for d in part] + (
            ["{not json"] if broken and name == "b.jsonl" else []
        )
        (root / name).write_text("\n".join(lines) + "\n")
    return DataConfig(
        dir=str(root.parent / "ds"),
        source=SourceConfig(kind="jsonl", paths=[str(root / "*.jsonl")]),
        tokenizer=TokenizerConfig(
            vocab_size=512, path=str(root.parent / "ds" / "tokenizer"), train_bytes=200_000
        ),
        shard_tokens=5000,
        val_fraction=0.1,
        num_workers=1,
    )


def test_prepare_failing_mid_source_resumes_after_the_fix_and_refuses_damage_or_other_settings(
    tmp_path: Path, corpus: tuple[Path, list[str]], dir_snapshot: object
) -> None:
    docs = corpus[1]
    reference = _jsonl_corpus(tmp_path / "ref" / "src", docs, broken=False)
    prepare_dataset(reference)

    cfg = _jsonl_corpus(tmp_path / "run" / "src", docs, broken=True)
    with pytest.raises(DatasetError, match=r"b\.jsonl:\d+: not a JSON object"):
        prepare_dataset(cfg)
    out = Path(cfg.dir)
    progress = json.loads((out / PROGRESS).read_text())
    finished = progress["splits"]["train"]["shards"]
    assert len(finished) >= 3 and not (out / MANIFEST).exists()

    # Another shard size would not continue the same files: refused, nothing touched.
    before = dir_snapshot(out)
    with pytest.raises(DatasetError, match=r"\.prepare_progress\.json was written with other settings"):
        prepare_dataset(dataclasses.replace(cfg, shard_tokens=4000))
    assert dir_snapshot(out) == before

    # A finished shard changed behind prepare's back: refused, named.
    shard = out / finished[1]["file"]
    good = shard.read_bytes()
    shard.write_bytes(good[:-2] + b"\x00\x00")
    with pytest.raises(
        DatasetError, match=r"train_000001\.bin: shard recorded as finished .* missing or changed"
    ):
        prepare_dataset(cfg)
    shard.write_bytes(good)

    _jsonl_corpus(tmp_path / "run" / "src", docs, broken=False)
    prepare_dataset(cfg)
    ref, run = dir_snapshot(Path(reference.dir)), dir_snapshot(out)
    ref_manifest, run_manifest = json.loads(ref.pop(MANIFEST)), json.loads(run.pop(MANIFEST))
    assert run == ref  # every shard and the tokenizer, byte for byte
    # The manifests differ only where the source paths are named.
    for m in (ref_manifest, run_manifest):
        m["source"].pop("paths"), m["settings"]["source"].pop("paths"), m.pop("fingerprint")
    assert run_manifest == ref_manifest
