"""The tokenizer worker: encodes a batch of documents, each followed by <|endoftext|>.

Kept apart from prepare.py and free of torch so a spawned worker process starts in a fraction of a second.
"""

from __future__ import annotations

import numpy as np
import tiktoken

_ENC: tiktoken.Encoding | None = None


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
    docs = [_ENC.encode_ordinary(text) for text in texts]
    lengths = np.fromiter((len(d) + 1 for d in docs), dtype=np.int64, count=len(docs))
    flat = np.empty(int(lengths.sum()), dtype=np.uint32)
    pos = 0
    for doc in docs:
        flat[pos : pos + len(doc)] = doc
        flat[pos + len(doc)] = eot
        pos += len(doc) + 1
    return lengths, flat
