"""The tokenizer worker: encodes a batch of documents, each followed by <|endoftext|>.

Kept apart from prepare.py and free of torch so a spawned worker process starts in a fraction of a second.
"""

from __future__ import annotations

import re

import numpy as np
import tiktoken

_ENC: tiktoken.Encoding | None = None
_PIECE = 1 << 17
_LONG_BLANK_RUN = re.compile(rf"[^\S\r\n]{{{2 * _PIECE},}}")
"""Spaces, tabs and other whitespace but line ends, 256k or more in a row."""


def init_worker(enc: tiktoken.Encoding) -> None:
    """Pool initializer: the encoding arrives pickled once per worker, not once per batch."""
    global _ENC
    _ENC = enc


def encode_batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(token count of each document, all documents' tokens back to back) with an eot after each one.

    Special-token text inside a document (say, a literal "<|endoftext|>") is encoded as ordinary text,
    so only the separators this function adds are end-of-text tokens.
    """
    assert _ENC is not None, "init_worker must run first"
    eot = _ENC.eot_token
    docs = [_encode(_ENC, text) for text in texts]
    lengths = np.fromiter((len(d) + 1 for d in docs), dtype=np.int64, count=len(docs))
    flat = np.empty(int(lengths.sum()), dtype=np.uint32)
    pos = 0
    for doc in docs:
        flat[pos : pos + len(doc)] = doc
        flat[pos + len(doc)] = eot
        pos += len(doc) + 1
    return lengths, flat


def _encode(enc: tiktoken.Encoding, text: str) -> list[int]:
    """encode_ordinary, except that a run of 256k or more spaces or tabs is encoded in 128k pieces: tiktoken's
    regex overflows its stack on such a run of about 1M (a Rust panic naming no document). Text without one,
    which is every document that encoded before, gets exactly encode_ordinary's tokens."""
    if len(text) < 2 * _PIECE or not (runs := list(_LONG_BLANK_RUN.finditer(text))):
        return enc.encode_ordinary(text)
    cuts = [cut for run in runs for cut in range(run.start() + _PIECE, run.end(), _PIECE)]
    tokens: list[int] = []
    for lo, hi in zip([0, *cuts], [*cuts, len(text)], strict=True):
        tokens += enc.encode_ordinary(text[lo:hi])
    return tokens
