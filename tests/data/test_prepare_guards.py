"""`python -m data.prepare` refuses what would leave a wrong or unusable dataset (a second prepare into a
directory being prepared, a split without tokens, invalid UTF-8), and a long run of letters trains quickly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data.config import DataConfig, SourceConfig, TokenizerConfig
from data.dataset import TokenDataset
from data.loader import TokenLoader
from data.prepare import MANIFEST, ensure_dataset, main
from data.sources import stdlib_files
from data.spec import LoaderSpec
from data.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[2]
EXIT_DATASET = 2


def write_stdlib_docs(root: Path, count: int, start: int = 0) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(stdlib_files()[start : start + count]):
        (root / f"doc_{i:04d}.txt").write_bytes(path.read_bytes().decode("utf-8", "replace").encode())


def prepare_args(out: Path, corpus: Path, *extra: str) -> list[str]:
    return [
        "data=local_text",
        f"data.dir={out}",
        f"data.source.paths=[{corpus}/*.txt]",
        "data.tokenizer.vocab_size=512",
        "data.shard_tokens=5000",
        "data.num_workers=1",
        *extra,
    ]


def test_second_prepare_into_a_directory_being_prepared_fails_naming_it_and_training_waits(
    tmp_path: Path, dir_snapshot: object, capsys: pytest.CaptureFixture
) -> None:
    corpus, out = tmp_path / "corpus", tmp_path / "ds"
    write_stdlib_docs(corpus, 60)
    args = prepare_args(out, corpus, "data.val_fraction=0.1")
    first = subprocess.Popen(
        [sys.executable, "-m", "data.prepare", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / ".prepare.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(SystemExit) as failed:
            main(args)
        assert first.poll() is None, "the first prepare ended before the second started; enlarge the corpus"
        assert failed.value.code == EXIT_DATASET
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"dataset unavailable: {out}: process {first.pid} is running `python -m data.prepare` into this "
            "directory; wait for it to finish (the dataset is then ready to use), or prepare into another "
            "data.dir"
        )
        # Training's ensure_dataset waits for it instead, then opens what it made.
        cfg = DataConfig(
            dir=str(out),
            source=SourceConfig(kind="text", paths=[f"{corpus}/*.txt"]),
            tokenizer=TokenizerConfig(vocab_size=512, path=str(out / "tokenizer")),
            shard_tokens=5000,
            val_fraction=0.1,
            num_workers=1,
        )
        assert ensure_dataset(cfg) == out / MANIFEST
    finally:
        output, _ = first.communicate(timeout=120)
    assert first.returncode == 0 and f"prepared {out}" in output, output
    TokenLoader(out, LoaderSpec("val", 64, 2, 0, prefetch=0)).close()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_prepare_with_an_empty_val_split_fails_naming_it_and_publishes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    corpus, out = tmp_path / "corpus", tmp_path / "ds"
    write_stdlib_docs(corpus, 12)  # none of documents 0..11 hashes below 1%
    with pytest.raises(SystemExit) as failed:
        main(prepare_args(out, corpus, "data.val_fraction=0.01"))
    assert failed.value.code == EXIT_DATASET
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"dataset unavailable: {out}: the val split got 0 tokens (0 of 12 documents with "
        "data.val_fraction=0.01), and training needs both splits; raise data.val_fraction or add documents "
        f"to the source. No manifest was written: delete {out} and prepare again with the new settings"
    )
    assert not (out / MANIFEST).exists()


def test_invalid_utf8_in_a_jsonl_source_stops_prepare_naming_file_line_and_offset(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    corpus, out = tmp_path / "corpus", tmp_path / "ds"
    corpus.mkdir()
    good = [json.dumps({"text": p.read_text(errors="replace")}) + "\n" for p in stdlib_files()[:8]]
    bad = b'{"text": "caf\xe9 au lait"}\n'
    (corpus / "a.jsonl").write_bytes("".join(good[:5]).encode() + bad + "".join(good[5:]).encode())
    args = prepare_args(out, corpus, "data=jsonl", f"data.source.paths=[{corpus}/*.jsonl]")
    with pytest.raises(SystemExit) as failed:
        main(args)
    offset = len("".join(good[:5]).encode()) + len(b'{"text": "caf')
    assert failed.value.code == EXIT_DATASET
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .startswith(
            f"dataset unavailable: {corpus / 'a.jsonl'}:6: invalid UTF-8 at byte offset {offset} (b'\\xe9'); "
            "re-encode the file as UTF-8"
        )
    )
    assert not (out / MANIFEST).exists()


def test_prepare_handles_a_megabyte_of_one_letter_or_of_spaces_in_seconds(tmp_path: Path) -> None:
    corpus, out = tmp_path / "corpus", tmp_path / "ds"
    write_stdlib_docs(corpus, 5)
    long_docs = ["a" * 1_000_000, "x" + " " * 1_000_000 + "y"]  # BPE training hung; tiktoken panicked
    for i, text in enumerate(long_docs):
        (corpus / f"doc_999{i}.txt").write_text(text)
    # A subprocess only so that a regression fails at the timeout instead of hanging the suite (the trainer
    # is native code; it cannot be interrupted in-process).
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "data.prepare", *prepare_args(out, corpus, "data.val_fraction=0.1")],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert time.monotonic() - start < 60
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["splits"]["train"]["documents"] == 6 and manifest["splits"]["val"]["documents"] == 1
    train = TokenDataset(out, "train", seq_len=64)
    enc = load_tokenizer(TokenizerConfig(vocab_size=512, path=str(out / "tokenizer")))
    text = enc.decode(train.tokens(0, train.num_tokens).tolist())
    assert text.endswith("".join(doc + "<|endoftext|>" for doc in long_docs))
