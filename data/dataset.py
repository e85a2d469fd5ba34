"""A prepared split as one long token stream over memory-mapped shards, cut into fixed-length windows.

Window i covers tokens [i * seq_len, i * seq_len + seq_len + 1): its first seq_len tokens are the inputs and
its last seq_len the targets, so consecutive windows share one token and documents pack across windows.
"""

from __future__ import annotations

import json
from fnmatch import fnmatch
from pathlib import Path

import numpy as np

from data.shards import (
    MANIFEST,
    SPLITS,
    VERSION,
    DatasetError,
    ShardHeader,
    dtype_for_vocab,
    manifest_fingerprint,
    open_shard,
)
from data.verify import ShardCheck, verify_shards


def read_manifest(dataset_dir: Path) -> dict:
    """The manifest of a prepared dataset directory, checked by `check_manifest` against the shard files in
    the directory."""
    if not dataset_dir.is_dir():
        raise DatasetError(
            f"{dataset_dir}: dataset directory does not exist; run `python -m data.prepare` "
            "(with the same data.* settings) to create it"
        )
    path = dataset_dir / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{path}: manifest is missing; the dataset was never prepared or is unfinished")
    files = [p.name for p in dataset_dir.glob("*.bin")]
    return check_manifest(path.read_text(), str(path), files)


def check_manifest(text: str, where: str, files: list[str]) -> dict:
    """The parsed manifest `text` (read from `where`: a path or URL), checked for format version, its own
    fingerprint and agreement with `files`, the names of the shard files beside it. A local directory and a
    dataset URL are checked by this one function."""
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{where}: not valid JSON ({err})") from err
    if manifest.get("format_version") != VERSION:
        raise DatasetError(
            f"{where}: format_version {manifest.get('format_version')!r}, this code reads version {VERSION}"
        )
    if manifest.get("fingerprint") != manifest_fingerprint(manifest):
        raise DatasetError(
            f"{where}: its content does not match its fingerprint "
            f"{str(manifest.get('fingerprint'))[:16]}...: "
            "the manifest was edited or damaged after prepare (e.g. shards dropped from a split). "
            "Restore it, or delete the dataset directory and run `python -m data.prepare` again"
        )
    for split, entry in manifest["splits"].items():
        _check_split_listing(where, split, entry, files)
    return manifest


def _check_split_listing(where: str, split: str, entry: dict, files: list[str]) -> None:
    """The split's token total is the sum of its shards, and every shard file of the split is listed: a
    manifest that lists fewer shards than prepare wrote would silently train on part of the data."""
    listed = {shard["file"] for shard in entry["shards"]}
    total = sum(shard["tokens"] for shard in entry["shards"])
    if total != entry["tokens"]:
        raise DatasetError(
            f"{where}: the {split} split records {entry['tokens']} tokens but its {len(listed)} shards hold "
            f"{total}; the manifest disagrees with itself. Prepare the dataset again"
        )
    unlisted = sorted(name for name in files if fnmatch(name, f"{split}_*.bin") and name not in listed)
    if unlisted:
        raise DatasetError(
            f"{where}: lists {len(listed)} {split} shards but the directory also holds {len(unlisted)} "
            f"it does not list ({', '.join(unlisted[:3])}{', ...' if len(unlisted) > 3 else ''}); the "
            "manifest or the directory was changed after prepare. Restore it, or prepare the dataset again "
            "into an empty data.dir"
        )


def check_shard_header(name: str, header: ShardHeader, entry: dict, manifest: dict, where: str) -> None:
    """The shard's header agrees with its manifest `entry` and the manifest's tokenizer (`where`: the
    manifest's path or URL); `name` is the shard's path or URL for the message."""
    tok = manifest["tokenizer"]
    if header.vocab_size > 2 ** (8 * header.itemsize):
        raise DatasetError(
            f"{name}: vocabulary of {header.vocab_size} tokens is too large for {header.dtype.name} "
            f"tokens (at most {2 ** (8 * header.itemsize)}); expected uint32 shards"
        )
    expected = {
        "token count": (header.num_tokens, entry["tokens"]),
        "bytes per token": (header.itemsize, dtype_for_vocab(tok["n_vocab"]).itemsize),
        "vocabulary size": (header.vocab_size, tok["n_vocab"]),
        "tokenizer fingerprint": (header.tokenizer_fingerprint.hex(), tok["fingerprint"][:32]),
    }
    for what, (found, wanted) in expected.items():
        if found != wanted:
            raise DatasetError(f"{name}: shard header {what} is {found} but {where} expects {wanted}")


class ShardStream:
    """Reads a split's shards as one token stream cut into windows. Subclasses set seq_len, vocab_size and
    starts (each shard's first token in the stream) and say how a shard's tokens are reached: mapped from a
    local directory (TokenDataset) or fetched through a cache (data/remote.py: RemoteDataset)."""

    seq_len: int
    vocab_size: int
    starts: np.ndarray

    def _open_split(self, manifest: dict, split: str, seq_len: int, where: str) -> list[dict]:
        """Sets what both datasets take from a checked manifest (fingerprint, vocabulary, the split's layout
        in windows of `seq_len`) and returns the split's shard entries."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; expected one of {list(SPLITS)}")
        if seq_len <= 0:
            raise ValueError(f"seq_len={seq_len}; expected a positive number of tokens")
        tok = manifest["tokenizer"]
        self.fingerprint: str = manifest["fingerprint"]
        self.vocab_size = tok["n_vocab"]
        self.eot_token: int = tok["eot_token"]
        self.tokenizer_fingerprint: str = tok["fingerprint"]
        self.seq_len = seq_len
        entries: list[dict] = manifest["splits"][split]["shards"]
        sizes = np.array([e["tokens"] for e in entries], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self.num_tokens = int(self.starts[-1])
        self.num_sequences = max(0, (self.num_tokens - 1) // seq_len)
        if self.num_sequences == 0:
            raise DatasetError(
                f"{where}: the {split} split holds {self.num_tokens} tokens, too few for one "
                f"sequence of seq_len={seq_len} (+1 target token); prepare more text or lower seq_len"
            )
        return entries

    def shard_tokens(self, shard: int) -> np.ndarray:
        raise NotImplementedError

    def shard_name(self, shard: int) -> str:
        """The shard's path or URL, for error messages."""
        raise NotImplementedError

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the split's stream as int64, read across shard boundaries."""
        out = np.empty(stop - start, dtype=np.int64)
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        filled = 0
        while filled < len(out):
            lo = start + filled - int(self.starts[shard])
            piece = self.shard_tokens(shard)[lo : lo + len(out) - filled]
            out[filled : filled + len(piece)] = piece
            filled += len(piece)
            shard += 1
        return out

    def windows(self, ids: np.ndarray) -> np.ndarray:
        """[len(ids), seq_len + 1] int64 windows."""
        span = self.seq_len + 1
        out = np.empty((len(ids), span), dtype=np.int64)
        for row, i in enumerate(ids.tolist()):
            out[row] = self.tokens(i * self.seq_len, i * self.seq_len + span)
        # Microseconds per batch; an id outside the vocabulary would fail in the embedding naming no file.
        if out.size and int(out.max()) >= self.vocab_size:
            self._raise_out_of_vocab(ids, out)
        return out

    def _raise_out_of_vocab(self, ids: np.ndarray, out: np.ndarray) -> None:
        row, col = (int(x) for x in np.argwhere(out >= self.vocab_size)[0])
        position = int(ids[row]) * self.seq_len + col
        shard = int(np.searchsorted(self.starts, position, side="right")) - 1
        at, token = position - int(self.starts[shard]), int(out[row, col])
        raise DatasetError(
            f"{self.shard_name(shard)}: token id {token} at token {at} is outside the vocabulary of "
            f"{self.vocab_size} tokens recorded in its manifest; the shard was altered after prepare "
            "(verification at start-up would have caught it). Prepare the dataset again"
        )


class TokenDataset(ShardStream):
    def __init__(self, dataset_dir: str | Path, split: str, seq_len: int, verify: bool = True) -> None:
        """verify: check each shard's payload (sha256, token ids) against the manifest before first use; a
        pass is remembered per machine (data/verify.py), so only the first open of a shard pays for it."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; expected one of {list(SPLITS)}")
        self.dir = Path(dataset_dir)
        manifest = read_manifest(self.dir)
        entries = self._open_split(manifest, split, seq_len, str(self.dir / MANIFEST))
        self.shards: list[np.ndarray] = []
        self.paths: list[Path] = []
        checks: list[ShardCheck] = []
        for entry in entries:
            path = self.dir / entry["file"]
            header, tokens = open_shard(path)
            check_shard_header(str(path), header, entry, manifest, str(self.dir / MANIFEST))
            self.shards.append(tokens)
            self.paths.append(path)
            checks.append(ShardCheck(path, entry["sha256"], self.vocab_size, header.itemsize))
        if verify:
            verify_shards(checks)

    def shard_tokens(self, shard: int) -> np.ndarray:
        return self.shards[shard]

    def shard_name(self, shard: int) -> str:
        return str(self.paths[shard])
