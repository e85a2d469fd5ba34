"""Shard payloads checked against the manifest before first use, once per shard per machine.

A shard passes when the sha256 of its file equals the manifest's and every token id is below the vocabulary
size. That reads the whole file, so a pass is remembered as a stamp in a machine-local cache
($DIFFV2_VERIFY_CACHE, default ~/.cache/diffv2/verified-shards; deleting it only costs one more hash pass). A
stamp is keyed by the shard's resolved path, device, inode, size, mtime and ctime, the expected sha256 and the
vocabulary size: a shard rewritten, replaced or touched since, or a manifest that now expects other bytes, is
hashed again.

The stamp file doubles as a lock: the processes that open one dataset at once (the ranks of a node) hash each
shard once. Each first takes the shards nobody else holds (several at a time, in threads), then waits for
the others' verdicts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.shards import HEADER_BYTES, MANIFEST, DatasetError

CACHE_ENV = "DIFFV2_VERIFY_CACHE"
_BLOCK = 1 << 22
"""Bytes hashed per read: a multiple of both token sizes, so each block holds whole tokens."""
MAX_THREADS = 8


@dataclass(frozen=True)
class ShardCheck:
    path: Path
    sha256: str
    """The file's sha256 as the manifest records it."""
    vocab_size: int
    itemsize: int
    """Bytes per token: 2 or 4 (from the already checked header)."""


def verify_cache_dir() -> Path:
    """Where verified-stamps live: $DIFFV2_VERIFY_CACHE, else $XDG_CACHE_HOME or ~/.cache, then diffv2/."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "diffv2" / "verified-shards"


def scan_shard(check: ShardCheck) -> None:
    """Hashes the whole file and checks every token id; raises DatasetError naming the shard on a mismatch."""
    dtype = np.dtype(np.uint16 if check.itemsize == 2 else np.uint32).newbyteorder("<")
    digest = hashlib.sha256()
    bad: tuple[int, int] | None = None  # (token id, token index) of the first id outside the vocabulary
    with open(check.path, "rb") as f:
        digest.update(f.read(HEADER_BYTES))
        done = 0
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
            tokens = np.frombuffer(block, dtype=dtype, count=len(block) // check.itemsize)
            if bad is None and tokens.size and int(tokens.max()) >= check.vocab_size:
                index = int(np.flatnonzero(tokens >= check.vocab_size)[0])
                bad = int(tokens[index]), done + index
            done += tokens.size
    found = digest.hexdigest()
    manifest = check.path.parent / MANIFEST
    if found != check.sha256:
        raise DatasetError(
            f"{check.path}: sha256 {found[:16]}... does not match {check.sha256[:16]}... recorded in "
            f"{manifest}; the shard was altered or damaged after prepare. Restore it, or delete the dataset "
            "directory and run `python -m data.prepare` again"
        )
    if bad is not None:
        raise DatasetError(
            f"{check.path}: token id {bad[0]} at token {bad[1]} is outside the vocabulary of "
            f"{check.vocab_size} tokens recorded in {manifest}; the shard was not written by this tokenizer. "
            "Prepare the dataset again with the tokenizer it is meant for"
        )


def _stamp(check: ShardCheck, cache: Path) -> tuple[Path, bytes]:
    """The stamp's path for the shard as it is on disk now, and the content that marks it verified."""
    st = os.stat(check.path)
    resolved = str(check.path.resolve())
    key = [resolved, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    key += [check.sha256, check.vocab_size]
    name = hashlib.sha256(json.dumps(key).encode()).hexdigest()
    return cache / name, f"verified {check.sha256} {resolved}\n".encode()


def _stamped(check: ShardCheck, cache: Path) -> bool:
    """The stamp says verified (read without the lock: a stamp being written reads as not verified)."""
    stamp, verdict = _stamp(check, cache)
    try:
        with open(stamp, "rb") as f:
            return f.read(len(verdict) + 1) == verdict
    except OSError:
        return False


def _verify_locked(check: ShardCheck, cache: Path, wait: bool) -> bool:
    """Verifies `check` under its stamp's lock unless the stamp says it is done. False: another process holds
    the lock and `wait` is off (try it later)."""
    stamp, verdict = _stamp(check, cache)
    try:
        fd = os.open(stamp, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # e.g. a full disk: verify without remembering it
        scan_shard(check)
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        except OSError:  # a filesystem without flock (some network mounts): verify without remembering it
            scan_shard(check)
            return True
        if os.pread(fd, len(verdict) + 1, 0) == verdict:
            return True
        scan_shard(check)
        # Written in place under the lock: a crash mid-write leaves other bytes, which only means re-hashing;
        # a failed write (a full disk) only means hashing again next time.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, verdict, 0)
        return True
    finally:
        os.close(fd)  # also releases the lock


def verify_shards(checks: list[ShardCheck]) -> None:
    """Checks every shard's payload against the manifest unless this machine already verified it as it is."""
    cache = verify_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        writable = os.access(cache, os.W_OK)
    except OSError:
        writable = False
    if not writable:  # no place to remember a pass (read-only home): verify every time
        for check in checks:
            scan_shard(check)
        return
    pending = [check for check in checks if not _stamped(check, cache)]  # cached: no threads, no locks
    if not pending:
        return
    # Threads hash shards in parallel (hashlib, file reads and numpy release the GIL); map re-raises the first
    # failure in shard order.
    threads = max(1, min(MAX_THREADS, len(os.sched_getaffinity(0)), len(pending)))
    with ThreadPoolExecutor(threads, thread_name_prefix="verify-shards") as pool:
        done = list(pool.map(lambda check: _verify_locked(check, cache, wait=False), pending))
        busy = [check for check, ok in zip(pending, done, strict=True) if not ok]
        list(pool.map(lambda check: _verify_locked(check, cache, wait=True), busy))
