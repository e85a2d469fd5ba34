"""Tokenizers: a trained BPE survives save/load and encodes exactly like its trainer; named encodings fail
clearly offline."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from data.bpe import hf_bpe_tokenizer, to_tiktoken, train_hf_bpe
from data.config import TokenizerConfig
from data.shards import DatasetError
from data.sources import stdlib_files
from data.tokenizer import EOT, SPLIT_PATTERN, load_tokenizer, save_bpe, tokenizer_files

HELD_OUT_EXTRA = [
    "Ünïcödé ßtraße, 日本語の文章, 中文, 한국어, עברית, العربية, ελληνικά, русский текст\n",
    "emoji 🤖🚀 ZWJ 👩‍👩‍👧 flags 🇫🇷 combining e\u0301 and \u200b zero width\n",
    "x=1_000_000_000; y = 3.14159e-10\n\t\tdeep   indent  \r\n\r\n   trailing   \n",
    "'s 've 're 'LL SHOUTING'D it's don't\n",
    "<|endoftext|> is ordinary text here\n",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    files = stdlib_files()
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files[:80]]
    hf = train_hf_bpe(texts, vocab_size=1024)
    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    save_bpe(to_tiktoken(hf), path, {"trainer": "test"})
    return hf, path


def held_out_texts() -> list[str]:
    files = stdlib_files()
    return [p.read_text(encoding="utf-8", errors="replace") for p in files[400:460]] + HELD_OUT_EXTRA


def test_reloaded_bpe_encodes_held_out_text_exactly_like_the_hf_trainer(trained: tuple) -> None:
    hf, path = trained
    enc = load_tokenizer(TokenizerConfig(name="bpe", vocab_size=1024, path=str(path)))
    assert enc.n_vocab == 1024
    assert enc.eot_token == 1023
    tokens = 0
    for text in held_out_texts():
        ids = enc.encode_ordinary(text)
        assert ids == hf.encode(text).ids, text[:80]
        assert enc.decode(ids) == text
        tokens += len(ids)
    assert tokens > 50_000  # a real amount of held-out text was compared


def test_training_splits_text_like_encoding_except_that_runs_are_cut_after_256_characters() -> None:
    trainer, encoder = hf_bpe_tokenizer().pre_tokenizer, hf_bpe_tokenizer(SPLIT_PATTERN).pre_tokenizer
    for text in held_out_texts()[-25:]:  # 20 stdlib files and the unicode / whitespace edge cases
        assert trainer.pre_tokenize_str(text) == encoder.pre_tokenize_str(text), text[:80]
    long = "x" + "a" * 100_000 + " " * 700 + "=" * 600 + "\n" * 600
    pieces = [piece for piece, _ in trainer.pre_tokenize_str(long)]
    assert sum(map(len, pieces)) == len(long) and max(map(len, pieces)) <= 512  # ASCII: one char per byte
    assert max(len(piece) for piece, _ in encoder.pre_tokenize_str(long)) == 100_001


def test_reloaded_bpe_keeps_endoftext_as_a_special_token(trained: tuple) -> None:
    _, path = trained
    enc = load_tokenizer(TokenizerConfig(name="bpe", vocab_size=1024, path=str(path)))
    assert enc.encode(EOT, allowed_special="all") == [enc.eot_token]
    assert enc.eot_token not in enc.encode_ordinary(EOT)


def test_changed_rank_file_fails_the_fingerprint_check(trained: tuple, tmp_path: Path) -> None:
    _, path = trained
    ranks, meta = tokenizer_files(path)
    copy = tmp_path / "tokenizer"
    lines = ranks.read_text().splitlines()
    lines[300], lines[301] = lines[300].split()[0] + " 301", lines[301].split()[0] + " 300"
    tokenizer_files(copy)[0].write_text("\n".join(lines) + "\n")
    tokenizer_files(copy)[1].write_bytes(meta.read_bytes())
    with pytest.raises(DatasetError, match=r"tokenizer\.tiktoken: ranks do not match the fingerprint"):
        load_tokenizer(TokenizerConfig(name="bpe", vocab_size=1024, path=str(copy)))


def test_vocab_size_other_than_the_saved_one_is_an_error(trained: tuple) -> None:
    _, path = trained
    with pytest.raises(DatasetError, match=r"tokenizer has 1024 tokens but tokenizer.vocab_size=2048"):
        load_tokenizer(TokenizerConfig(name="bpe", vocab_size=2048, path=str(path)))


def test_missing_trained_tokenizer_says_to_run_prepare(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetError, match=r"nothing\.tiktoken: trained tokenizer file is missing.*data\.prepare"
    ):
        load_tokenizer(TokenizerConfig(name="bpe", path=str(tmp_path / "nothing")))


def _network_reachable() -> bool:
    try:
        socket.getaddrinfo("openaipublic.blob.core.windows.net", 443)
        return True
    except OSError:
        return False


@pytest.mark.skipif(_network_reachable(), reason="tiktoken can download the encoding here")
def test_named_encoding_offline_without_cache_says_set_tiktoken_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    with pytest.raises(DatasetError, match=r"tokenizer.name='gpt2'.*TIKTOKEN_CACHE_DIR.*tokenizer.name=bpe"):
        load_tokenizer(TokenizerConfig(name="gpt2"))


def test_unknown_tokenizer_name_lists_the_known_ones() -> None:
    with pytest.raises(DatasetError, match=r"tokenizer.name='gpt5' is not known.*cl100k_base"):
        load_tokenizer(TokenizerConfig(name="gpt5"))
