"""One small corpus and one prepared dataset per test session; tests that damage files work on copies."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from data.config import DataConfig, SourceConfig, TokenizerConfig
from data.prepare import prepare_dataset
from data.sources import stdlib_files

UNICODE_DOCS = [
    "Grüße aus Köln — naïve café, déjà vu, ½ + ¼ = ¾\n",
    "日本語のテキストと中文文本，한국어 텍스트도 있습니다。\n",
    "emoji 🤖🚀✨ and a ZWJ family 👩‍👩‍👧 and combining e\u0301\n",
    "tabs\tand   spaces\n\n\n    indented()\r\nwindows line\r\n",
    "a literal <|endoftext|> inside a document is ordinary text\n",
]
VOCAB = 512


def write_corpus(root: Path, n_stdlib: int) -> list[str]:
    """Writes the first `n_stdlib` standard-library files plus the unicode documents as .txt files; returns
    the documents in the order the text source reads them (sorted paths)."""
    root.mkdir(parents=True)
    docs = [p.read_bytes().decode("utf-8", errors="replace") for p in stdlib_files()[:n_stdlib]]
    docs += UNICODE_DOCS
    for i, text in enumerate(docs):
        (root / f"doc_{i:04d}.txt").write_bytes(text.encode("utf-8"))
    return docs


def text_config(corpus: Path, out: Path, **overrides: object) -> DataConfig:
    cfg = DataConfig(
        name="test",
        dir=str(out),
        source=SourceConfig(kind="text", paths=[str(corpus / "*.txt")]),
        tokenizer=TokenizerConfig(name="bpe", vocab_size=VOCAB, path=str(out / "tokenizer")),
        shard_tokens=20_000,
        val_fraction=0.1,
        num_workers=2,
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture(scope="session", autouse=True)
def verify_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's shard-verification stamps live in a tmp folder, not in the user's ~/.cache."""
    root = tmp_path_factory.mktemp("verified-shards")
    previous = os.environ.get("DIFFV2_VERIFY_CACHE")
    os.environ["DIFFV2_VERIFY_CACHE"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("DIFFV2_VERIFY_CACHE", None)
    else:
        os.environ["DIFFV2_VERIFY_CACHE"] = previous


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("corpus") / "txt"
    return root, write_corpus(root, n_stdlib=60)


@pytest.fixture(scope="session")
def prepared(corpus: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory) -> DataConfig:
    """The corpus prepared once (2 workers): BPE, shards of 20k tokens, 10% of documents held out."""
    cfg = text_config(corpus[0], tmp_path_factory.mktemp("prepared") / "ds")
    prepare_dataset(cfg)
    return cfg


@pytest.fixture
def prepared_copy(prepared: DataConfig, tmp_path: Path) -> Path:
    """A private copy of the prepared dataset directory, free to damage."""
    return Path(shutil.copytree(prepared.dir, tmp_path / "copy"))


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes, to prove a failing call changed nothing."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def make_config() -> object:
    """text_config as a fixture: (corpus dir, output dir, **DataConfig overrides) -> DataConfig."""
    return text_config


@pytest.fixture(scope="session")
def make_corpus() -> object:
    """write_corpus as a fixture: (root, n_stdlib) -> documents in source order."""
    return write_corpus


@pytest.fixture(scope="session")
def dir_snapshot() -> object:
    """snapshot as a fixture: root -> {relative path: bytes}."""
    return snapshot
