"""The token shard format: a 64-byte header checked on every read, then a flat uint16/uint32 payload.

    offset  size  field
    0       8     magic b"DIFFV2TK"
    8       4     format version (uint32, little endian)
    12      4     bytes per token: 2 (uint16) or 4 (uint32), chosen from the vocabulary size
    16      8     token count (uint64)
    24      8     vocabulary size of the tokenizer (uint64)
    32      16    first 16 bytes of the tokenizer fingerprint (sha256)
    48      16    zero padding, so the payload starts 64-byte aligned

A shard is written to a temporary name and renamed into place, so a crash never leaves a half shard visible.
A dataset directory lists its shards, their token counts and sha256 in `manifest.json` (written by prepare,
read by the loader; both take the name and the fingerprint rule from here, so the reader never imports the
writer).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import errors

MANIFEST = "manifest.json"
SPLITS = ("train", "val")
MAGIC = b"DIFFV2TK"
VERSION = 1
HEADER_BYTES = 64
_HEADER = struct.Struct("<8sIIQQ16s16x")
assert _HEADER.size == HEADER_BYTES


class DatasetError(errors.DatasetUnavailable, ValueError):
    """A dataset file (shard, manifest, tokenizer, source) is missing, malformed or inconsistent."""


def dtype_for_vocab(n_vocab: int) -> np.dtype:
    """The smallest unsigned dtype that holds every token id below `n_vocab`."""
    if n_vocab <= 2**16:
        return np.dtype(np.uint16)
    if n_vocab <= 2**32:
        return np.dtype(np.uint32)
    raise DatasetError(f"vocabulary of {n_vocab} tokens is too large for the shard dtypes (uint16/uint32)")


@dataclass(frozen=True)
class ShardHeader:
    num_tokens: int
    """Tokens in the payload."""
    itemsize: int
    """Bytes per token: 2 or 4."""
    vocab_size: int
    """Vocabulary size of the tokenizer that wrote the shard."""
    tokenizer_fingerprint: bytes
    """First 16 bytes of the tokenizer fingerprint."""

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16 if self.itemsize == 2 else np.uint32)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write `payload` to a temporary file beside `path`, flush it to disk, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: object) -> None:
    """JSON with sorted keys and a trailing newline, so identical content gives identical bytes."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def write_shard(path: Path, tokens: np.ndarray, vocab_size: int, tokenizer_fingerprint: str) -> str:
    """Writes one shard atomically and returns the sha256 of the whole file."""
    dtype = dtype_for_vocab(vocab_size)
    if tokens.size and int(tokens.max()) >= vocab_size:
        raise DatasetError(
            f"{path}: token id {int(tokens.max())} is outside the vocabulary of {vocab_size} tokens"
        )
    header = _HEADER.pack(
        MAGIC, VERSION, dtype.itemsize, tokens.size, vocab_size, bytes.fromhex(tokenizer_fingerprint)[:16]
    )
    payload = header + tokens.astype(dtype.newbyteorder("<"), copy=False).tobytes()
    atomic_write_bytes(path, payload)
    return hashlib.sha256(payload).hexdigest()


def read_header(path: Path) -> ShardHeader:
    """Reads and checks a shard's header and that the file holds exactly the payload it announces."""
    if not path.is_file():
        raise DatasetError(f"{path}: shard file is missing")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise DatasetError(f"{path}: truncated header ({len(raw)} bytes, expected {HEADER_BYTES})")
    magic, version, itemsize, num_tokens, vocab_size, fingerprint = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise DatasetError(f"{path}: not a diffv2 token shard (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise DatasetError(f"{path}: shard format version {version}, this code reads version {VERSION}")
    if itemsize not in (2, 4):
        raise DatasetError(f"{path}: {itemsize} bytes per token in the header, expected 2 or 4")
    expected = HEADER_BYTES + num_tokens * itemsize
    if size != expected:
        kind = "truncated payload" if size < expected else "trailing bytes after the payload"
        raise DatasetError(
            f"{path}: {kind}: the header announces {num_tokens} tokens x {itemsize} bytes "
            f"({expected} bytes with the header) but the file holds {size} bytes"
        )
    return ShardHeader(num_tokens, itemsize, vocab_size, fingerprint)


def open_shard(path: Path) -> tuple[ShardHeader, np.memmap]:
    """The checked header and a read-only memory map of the payload (no copy; pages load on demand)."""
    header = read_header(path)
    if header.num_tokens == 0:
        return header, np.zeros(0, dtype=header.dtype)
    tokens = np.memmap(path, dtype=header.dtype.newbyteorder("<"), mode="r", offset=HEADER_BYTES)
    return header, tokens


def manifest_fingerprint(manifest: dict) -> str:
    """sha256 of the manifest's content without its own "fingerprint" entry (sorted-key JSON).

    It names the dataset (a checkpoint's loader state records it) and seals the manifest: any edit made
    after prepare, such as a shard dropped from a split, no longer matches it.
    """
    content = {key: value for key, value in manifest.items() if key != "fingerprint"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
