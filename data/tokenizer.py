"""Tokenizers are tiktoken encodings: a named one (gpt2, cl100k_base, o200k_base) or a byte-level BPE the
project trained (data/bpe.py), stored as a `.tiktoken` rank file plus a JSON beside it."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import tiktoken

from data.config import TokenizerConfig
from data.shards import DatasetError, atomic_write_bytes, atomic_write_json

EOT = "<|endoftext|>"
NAMED_ENCODINGS = ("gpt2", "r50k_base", "p50k_base", "cl100k_base", "o200k_base")
# GPT-4's split pattern: numbers in groups of at most three digits, runs of whitespace kept apart from the
# word after them, so indentation in code becomes its own few tokens.
SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def tokenizer_files(path: str | Path) -> tuple[Path, Path]:
    """The rank file and the JSON of a trained BPE whose `tokenizer.path` stem is `path`."""
    stem = Path(path)
    return stem.with_name(stem.name + ".tiktoken"), stem.with_name(stem.name + ".json")


def encoding_fingerprint(enc: tiktoken.Encoding) -> str:
    """sha256 over the split pattern, the special tokens and every (token bytes, rank) pair."""
    digest = hashlib.sha256()
    digest.update(enc._pat_str.encode())
    digest.update(json.dumps(enc._special_tokens, sort_keys=True).encode())
    for token, rank in sorted(enc._mergeable_ranks.items(), key=lambda item: item[1]):
        digest.update(rank.to_bytes(4, "little") + len(token).to_bytes(2, "little") + token)
    return digest.hexdigest()


def save_bpe(enc: tiktoken.Encoding, path: str | Path, info: dict[str, object]) -> None:
    """Writes `<path>.tiktoken` (base64 token, rank per line; tiktoken's own format) and `<path>.json`."""
    ranks_file, meta_file = tokenizer_files(path)
    ranks_file.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"{base64.b64encode(token).decode()} {rank}\n"
        for token, rank in sorted(enc._mergeable_ranks.items(), key=lambda item: item[1])
    ]
    atomic_write_bytes(ranks_file, "".join(lines).encode())
    meta = {
        "name": enc.name,
        "pat_str": enc._pat_str,
        "special_tokens": enc._special_tokens,
        "n_vocab": enc.n_vocab,
        "fingerprint": encoding_fingerprint(enc),
        **info,
    }
    atomic_write_json(meta_file, meta)


def load_bpe(path: str | Path) -> tiktoken.Encoding:
    """Loads a trained BPE saved by `save_bpe` and checks it against the fingerprint in its JSON."""
    ranks_file, meta_file = tokenizer_files(path)
    for file in (ranks_file, meta_file):
        if not file.is_file():
            raise DatasetError(
                f"{file}: trained tokenizer file is missing (tokenizer.path={path}); "
                "run `python -m data.prepare` to train it, or point tokenizer.path at an existing one"
            )
    meta = json.loads(meta_file.read_text())
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(ranks_file.read_text().splitlines(), 1):
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as err:
            msg = f"{ranks_file}:{lineno}: expected '<base64 token> <rank>'; got {line!r}"
            raise DatasetError(msg) from err
    enc = tiktoken.Encoding(
        name=meta["name"],
        pat_str=meta["pat_str"],
        mergeable_ranks=ranks,
        special_tokens=meta["special_tokens"],
    )
    if encoding_fingerprint(enc) != meta["fingerprint"]:
        raise DatasetError(
            f"{ranks_file}: ranks do not match the fingerprint {meta['fingerprint'][:16]}... in {meta_file}; "
            "the tokenizer files were changed or mixed up"
        )
    return enc


def load_named(name: str) -> tiktoken.Encoding:
    """A tiktoken encoding by name, from tiktoken's cache or a download; a clear error when neither works."""
    if name not in NAMED_ENCODINGS:
        raise DatasetError(
            f"tokenizer.name={name!r} is not known; expected 'bpe' or one of {list(NAMED_ENCODINGS)}"
        )
    try:
        return tiktoken.get_encoding(name)
    except Exception as err:  # requests' connection errors, hash mismatches: all mean "not available here"
        raise DatasetError(
            f"tokenizer.name={name!r}: tiktoken could not load it from its cache or download it ({err}). "
            "Offline, copy tiktoken's cache files from a machine that has them and set TIKTOKEN_CACHE_DIR to "
            "that folder, or use tokenizer.name=bpe to train a tokenizer on the corpus"
        ) from err


def load_tokenizer(cfg: TokenizerConfig) -> tiktoken.Encoding:
    """The encoding `cfg` names: a trained BPE from `cfg.path`, or a named tiktoken encoding."""
    enc = load_bpe(cfg.path) if cfg.name == "bpe" else load_named(cfg.name)
    if EOT not in enc._special_tokens:
        raise DatasetError(f"tokenizer {cfg.name!r} has no {EOT} token to separate documents")
    if cfg.name == "bpe" and enc.n_vocab != cfg.vocab_size:
        raise DatasetError(
            f"{tokenizer_files(cfg.path)[1]}: tokenizer has {enc.n_vocab} tokens but "
            f"tokenizer.vocab_size={cfg.vocab_size}; use a fresh tokenizer.path or the saved size"
        )
    return enc
