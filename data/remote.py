"""RemoteDataset: one split of a dataset URL read through a ShardCache, with TokenDataset's interface and
checks: the manifest through `check_manifest` (format, fingerprint, the split's listing against the objects
beside it), each shard's header through `check_shard_header`, its payload through data/verify.py's stamp on
the cached file, and ids against the vocabulary per batch (ShardStream). Shards are fetched whole, on first
use or ahead of use (`prefetch`, background threads)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from data.cache import ShardCache
from data.config import CacheConfig
from data.dataset import ShardStream, check_manifest, check_shard_header
from data.objectstore import DEFAULT_TIMEOUT_S, filesystem, retrying
from data.shards import MANIFEST, DatasetError, dtype_for_vocab, open_shard
from data.verify import ShardCheck, verify_shards

OPEN_MAPS = 8
"""Shards kept mapped per dataset: open maps of evicted files pin disk space, so few."""


class MissingManifest(DatasetError):
    """The dataset URL holds no manifest: never prepared there (training may prepare it), unlike a manifest
    that cannot be read (a frozen server, a dropped connection), which is never a reason to prepare again."""


def read_remote_manifest(
    url: str, retries: int = 3, backoff_s: float = 0.5, timeout_s: float = DEFAULT_TIMEOUT_S
) -> tuple[object, str, dict]:
    """(filesystem, dataset path, manifest) of a dataset URL, checked as a local manifest is (against the
    objects beside it); each remote call bounded by `timeout_s` and tried `retries` times."""
    fs, root = filesystem(url, timeout_s)
    where = f"{url}/{MANIFEST}"
    try:
        raw = retrying(f"reading {where}", retries, backoff_s, lambda: fs.cat_file(f"{root}/{MANIFEST}"))
    except FileNotFoundError:
        raise MissingManifest(
            f"{where} does not exist; prepare the dataset there first "
            f"(`python -m data.prepare data.dir={url} ...`)"
        ) from None
    listing = retrying(f"listing {url}", retries, backoff_s, lambda: fs.ls(root, detail=False))
    files = [str(path).rstrip("/").rsplit("/", 1)[-1] for path in listing]
    return fs, root, check_manifest(raw.decode(), where, files)


def cache_from_config(cfg: CacheConfig) -> ShardCache:
    return ShardCache(cfg.dir, int(cfg.max_gb * 1e9), cfg.retries, timeout_s=cfg.timeout_s)


class RemoteDataset(ShardStream):
    """One split of a dataset URL as a token stream cut into windows (TokenDataset's layout and interface)."""

    def __init__(
        self, url: str, split: str, seq_len: int, cache: ShardCache, prefetch_threads: int = 2
    ) -> None:
        self.dir = url.rstrip("/")
        self.fs, self._root, self._manifest = read_remote_manifest(
            self.dir, cache.retries, cache.backoff_s, cache.timeout_s
        )
        self._where = f"{self.dir}/{MANIFEST}"
        self.entries = self._open_split(self._manifest, split, seq_len, self._where)
        self.cache = cache
        self._dtype = dtype_for_vocab(self.vocab_size)
        largest = max(self._bytes(e) for e in self.entries)
        if cache.max_bytes < 2 * largest:
            raise DatasetError(
                f"data.cache.max_gb={cache.max_bytes / 1e9:g} holds fewer than 2 shards of {self.dir} "
                f"({largest} bytes each); raise it"
            )
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()
        self._maps_lock = threading.Lock()
        self._threads = max(1, prefetch_threads)
        self._pool: ThreadPoolExecutor | None = None  # started by the first prefetch, stopped by close()
        self._ahead: dict[int, Future] = {}

    def _bytes(self, entry: dict) -> int:
        return 64 + int(entry["tokens"]) * self._dtype.itemsize

    def _open_cached(self, shard: int, path: Path) -> np.ndarray:
        """The cached file's tokens after the local dataset's checks: header, then payload (stamped)."""
        entry = self.entries[shard]
        header, tokens = open_shard(path)
        check_shard_header(str(path), header, entry, self._manifest, self._where)
        verify_shards([ShardCheck(path, entry["sha256"], self.vocab_size, header.itemsize)])
        return tokens

    def _fetch(self, shard: int, use: object = None) -> np.ndarray | None:
        """The shard in the cache (downloaded when absent); with `use`, its checked tokens."""
        entry = self.entries[shard]
        remote = f"{self._root}/{entry['file']}"
        return self.cache.open(
            self.fs, remote, entry["sha256"], self._bytes(entry), use or (lambda path: None)
        )

    def _shard(self, shard: int) -> np.ndarray:
        with self._maps_lock:
            if shard in self._maps:
                self._maps.move_to_end(shard)
                return self._maps[shard]
        future = self._ahead.pop(shard, None)
        if future is not None:
            future.result()  # a prefetch error (bad bytes, dropped connection) surfaces here, in the reader
        tokens = self._fetch(shard, lambda path: self._open_cached(shard, path))
        with self._maps_lock:
            self._maps[shard] = tokens
            while len(self._maps) > OPEN_MAPS:
                self._maps.popitem(last=False)
        return tokens

    def shards_of(self, ids: np.ndarray) -> list[int]:
        """Shard indices the windows `ids` read from (a window may span two)."""
        first = np.searchsorted(self.starts, ids * self.seq_len, side="right") - 1
        last = np.searchsorted(self.starts, ids * self.seq_len + self.seq_len, side="right") - 1
        return sorted(set(first.tolist()) | set(np.minimum(last, len(self.entries) - 1).tolist()))

    def prefetch(self, ids: np.ndarray) -> None:
        """Starts background downloads of the shards the windows `ids` will read."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="shard-prefetch")
        for shard in self.shards_of(ids):
            if shard not in self._ahead and shard not in self._maps:
                self._ahead[shard] = self._pool.submit(self._fetch, shard)

    def shard_tokens(self, shard: int) -> np.ndarray:
        return self._shard(shard)

    def shard_name(self, shard: int) -> str:
        return f"{self.dir}/{self.entries[shard]['file']}"

    def close(self) -> None:
        """Stops the background downloads (a later prefetch starts them again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._ahead.clear()
