"""Prepared datasets in object storage: any fsspec URL (`s3://`, `gs://`, `file://`), read through a bounded
local cache whose every shard was checked against the manifest's sha256 before it became visible.

- `RemoteDataset`: TokenDataset's interface (fingerprint, vocabulary, windows) over a dataset URL. Shards are
  fetched whole, on first use or ahead of use (`prefetch`, background threads), into the cache.
- `ShardCache`: files named by their sha256 under data.cache.dir, at most data.cache.max_gb on disk (least
  recently used shards go first). A download goes to a temporary file, is hashed, and is renamed into place
  only when the hash matches; a mismatch deletes it and names the shard. Dropped connections are retried
  with backoff, then reported with the URL and the last error.
- `upload_dataset`: puts a locally prepared dataset at a URL, the manifest last (its presence means complete).

Credentials are whatever the filesystem's library reads from the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL for s3fs; GOOGLE_APPLICATION_CREDENTIALS for
gcsfs): nothing here reads, stores or prints them, and URLs with embedded credentials are refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from data.config import CacheConfig, DataConfig
from data.dataset import ShardStream, TokenDataset
from data.shards import MANIFEST, SPLITS, VERSION, DatasetError, dtype_for_vocab, open_shard

CHUNK = 8 << 20
"""Bytes per read while downloading (hashed as they arrive)."""


def is_url(path: str | Path) -> bool:
    """True for an fsspec URL with a scheme (s3://, gs://, file://, memory://); a plain path is local."""
    return "://" in str(path)


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise DatasetError(
            f"{parts.scheme}://<credentials>@{parts.hostname}...: credentials in a data URL would reach "
            "logs and saved configs; put them in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
        )


def filesystem(url: str) -> tuple[object, str]:
    """(fsspec filesystem, path inside it) for `url`; the library reads credentials from the environment."""
    import fsspec

    _check_url(url)
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/")


def _retrying(what: str, attempts: int, backoff_s: float, fn: object) -> object:
    """fn() with retries on transient errors; a missing object is not transient and fails at once."""
    last: BaseException | None = None
    for attempt in range(attempts):
        try:
            return fn()
        except (FileNotFoundError, DatasetError):
            raise
        except Exception as err:  # s3fs/aiohttp/botocore raise many types for a dropped connection
            last = err
            if attempt + 1 < attempts:
                time.sleep(backoff_s * 2**attempt)
    raise DatasetError(
        f"{what}: failed {attempts} times (data.cache.retries), last error {type(last).__name__}: {last}"
    ) from last


def _alive(temporary: str) -> bool:
    """Whether the process that names a download temporary (.<sha>.tmp<pid>.<thread>) still runs."""
    try:
        os.kill(int(temporary.split(".tmp")[1].split(".")[0]), 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


class ShardCache:
    """Verified shards on local disk, named by sha256, bounded in bytes (least recently used evicted).

    Ranks of one node may share the directory: downloads are atomic renames and a reader whose file another
    process evicted fetches it again. Each process enforces max_bytes over the files it knows of (those
    present when it started and those it downloaded), so N processes on one directory may use up to N times
    the bound in the worst case."""

    def __init__(self, root: str | Path, max_bytes: int, retries: int = 3, backoff_s: float = 0.5) -> None:
        if max_bytes <= 0:
            raise DatasetError(f"data.cache.max_gb gives {max_bytes} bytes; expected a positive size")
        if retries < 1:
            raise DatasetError(f"data.cache.retries={retries}; expected at least 1 attempt")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.retries = retries
        self.backoff_s = backoff_s
        self.downloads = 0
        """Shards downloaded by this process (a re-download after eviction counts again)."""
        self.lock = threading.Lock()
        """Held while the cache's files change (and by readers while they map one)."""
        self._pending: dict[str, threading.Event] = {}
        self._reserved = 0
        self._lru: OrderedDict[str, int] = OrderedDict()  # sha256 -> bytes, oldest first
        for path in sorted(self.root.glob("*.bin"), key=lambda p: p.stat().st_mtime):
            self._lru[path.stem] = path.stat().st_size
        for stale in self.root.glob(".*.tmp*"):  # a download killed half way: never visible, never complete
            if not _alive(stale.name):  # another rank's download in progress is left alone
                stale.unlink(missing_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / f"{sha256}.bin"

    def get(
        self, fs: object, remote: str, sha256: str, size: int, keep: set[str] | frozenset = frozenset()
    ) -> Path:
        """The local path of the verified shard, downloading it when absent; `keep` (sha256s) stay cached."""
        while True:
            with self.lock:
                if sha256 in self._lru and self.path(sha256).is_file():
                    self._lru.move_to_end(sha256)
                    return self.path(sha256)
                event = self._pending.get(sha256)
                if event is None:  # this thread downloads it; others wait for it
                    event = self._pending[sha256] = threading.Event()
                    break
            event.wait()
        reserved = False
        try:
            self._make_room(size, keep | {sha256})
            reserved = True
            _retrying(
                f"downloading {fs.unstrip_protocol(remote)}",
                self.retries,
                self.backoff_s,
                lambda: self._download(fs, remote, sha256),
            )
            with self.lock:
                self._lru[sha256] = self.path(sha256).stat().st_size
                self.downloads += 1
            return self.path(sha256)
        finally:
            with self.lock:
                self._reserved -= size if reserved else 0
                self._pending.pop(sha256).set()

    def _download(self, fs: object, remote: str, sha256: str) -> None:
        tmp = self.root / f".{sha256}.tmp{os.getpid()}.{threading.get_ident()}"
        digest = hashlib.sha256()
        try:
            with fs.open(remote, "rb", block_size=CHUNK) as src, open(tmp, "wb") as dst:
                for block in iter(lambda: src.read(CHUNK), b""):
                    digest.update(block)
                    dst.write(block)
            if digest.hexdigest() != sha256:
                raise DatasetError(
                    f"{fs.unstrip_protocol(remote)}: downloaded bytes have sha256 "
                    f"{digest.hexdigest()[:16]}... but the manifest records {sha256[:16]}...; the shard was "
                    "not cached. The object changed or is damaged: prepare and upload the dataset again"
                )
            os.replace(tmp, self.path(sha256))
        finally:
            tmp.unlink(missing_ok=True)

    def _make_room(self, incoming: int, keep: set[str]) -> None:
        """Evicts least recently used shards until `incoming` bytes fit beside the cached shards and the
        downloads in flight (whose space is reserved until they finish)."""
        with self.lock:
            self._reserved += incoming
            used = sum(self._lru.values()) + self._reserved - incoming
            for sha in list(self._lru):
                if used + incoming <= self.max_bytes:
                    break
                if sha in keep:
                    continue
                used -= self._lru.pop(sha)
                self.path(sha).unlink(missing_ok=True)  # an open memory map keeps its pages until closed


def read_remote_manifest(url: str) -> tuple[object, str, dict]:
    """(filesystem, dataset path, manifest) of a dataset URL, checked for presence and format version."""
    fs, root = filesystem(url)
    path = f"{root}/{MANIFEST}"
    try:
        raw = _retrying(f"reading {url}/{MANIFEST}", 3, 0.5, lambda: fs.cat_file(path))
    except FileNotFoundError:
        raise DatasetError(
            f"{url}/{MANIFEST} does not exist; prepare the dataset there first "
            f"(`python -m data.prepare data.dir={url} ...`)"
        ) from None
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{url}/{MANIFEST}: not valid JSON ({err})") from err
    if manifest.get("format_version") != VERSION:
        raise DatasetError(
            f"{url}/{MANIFEST}: format_version {manifest.get('format_version')!r}, this code reads {VERSION}"
        )
    return fs, root, manifest


class RemoteDataset(ShardStream):
    """One split of a dataset URL as a token stream cut into windows (TokenDataset's layout and interface)."""

    def __init__(
        self, url: str, split: str, seq_len: int, cache: ShardCache, prefetch_threads: int = 2
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; expected one of {list(SPLITS)}")
        self.dir = url.rstrip("/")
        self.fs, self._root, manifest = read_remote_manifest(self.dir)
        tok = manifest["tokenizer"]
        self.fingerprint: str = manifest["fingerprint"]
        self.vocab_size: int = tok["n_vocab"]
        self.eot_token: int = tok["eot_token"]
        self.tokenizer_fingerprint: str = tok["fingerprint"]
        self.seq_len = seq_len
        self.cache = cache
        self._dtype = dtype_for_vocab(self.vocab_size)
        self.entries: list[dict] = manifest["splits"][split]["shards"]
        sizes = np.array([e["tokens"] for e in self.entries], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self.num_tokens = int(self.starts[-1])
        self.num_sequences = max(0, (self.num_tokens - 1) // seq_len)
        if self.num_sequences == 0:
            raise DatasetError(
                f"{self.dir}/{MANIFEST}: the {split} split holds {self.num_tokens} tokens, too few for one "
                f"sequence of seq_len={seq_len} (+1 target token)"
            )
        largest = max(64 + int(e["tokens"]) * self._dtype.itemsize for e in self.entries)
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

    def _fetch(self, shard: int, keep: frozenset = frozenset()) -> Path:
        e = self.entries[shard]
        size = 64 + int(e["tokens"]) * self._dtype.itemsize
        return self.cache.get(self.fs, f"{self._root}/{e['file']}", e["sha256"], size, keep)

    def _shard(self, shard: int) -> np.ndarray:
        with self._maps_lock:
            if shard in self._maps:
                self._maps.move_to_end(shard)
                return self._maps[shard]
        future = self._ahead.pop(shard, None)
        if future is not None:
            future.result()  # a prefetch error (bad bytes, dropped connection) surfaces here, in the reader
        while True:  # a background download may evict the file between fetch and open: fetch it again
            path = self._fetch(shard)
            with self.cache.lock:  # eviction takes this lock, so the file exists while it is mapped
                try:
                    header, tokens = open_shard(path)
                    break
                except (DatasetError, FileNotFoundError):
                    if path.is_file():  # a real fault of the file, not another process evicting it
                        raise
        if header.num_tokens != self.entries[shard]["tokens"]:
            raise DatasetError(
                f"{self.dir}/{self.entries[shard]['file']}: header announces {header.num_tokens} tokens, the "
                f"manifest {self.entries[shard]['tokens']}"
            )
        with self._maps_lock:
            self._maps[shard] = tokens
            while len(self._maps) > 8:  # open maps of evicted files pin disk space; keep few
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


def upload_dataset(local_dir: str | Path, url: str) -> None:
    """Copies a prepared dataset to `url`: shards and tokenizer files first, the manifest last."""
    local = Path(local_dir)
    manifest = json.loads((local / MANIFEST).read_text())
    fs, root = filesystem(url)
    files = [
        p
        for p in sorted(local.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    ]
    for path in files:
        rel = path.relative_to(local).as_posix()
        _retrying(f"uploading {url}/{rel}", 3, 0.5, lambda p=path, r=rel: fs.put_file(str(p), f"{root}/{r}"))
    _retrying(
        f"uploading {url}/{MANIFEST}",
        3,
        0.5,
        lambda: fs.pipe_file(
            f"{root}/{MANIFEST}", json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n"
        ),
    )


def cache_from_config(cfg: CacheConfig) -> ShardCache:
    return ShardCache(cfg.dir, int(cfg.max_gb * 1e9), cfg.retries)


def open_dataset(
    dataset_dir: str | Path,
    split: str,
    seq_len: int,
    cache: ShardCache | None = None,
    verify: bool = True,
) -> TokenDataset | RemoteDataset:
    """A local directory as a TokenDataset (`verify`: its shards' sha256 before first use); a URL as a
    RemoteDataset reading through `cache` (default: CacheConfig's defaults), which verifies every download."""
    if not is_url(dataset_dir):
        return TokenDataset(dataset_dir, split, seq_len, verify=verify)
    if cache is None:
        cache = cache_from_config(CacheConfig(dir=os.environ.get("DIFFV2_CACHE", ".cache/shards")))
    return RemoteDataset(str(dataset_dir), split, seq_len, cache)


def staging_dir(cfg: DataConfig) -> Path:
    """Where `prepare` builds a dataset bound for a URL before uploading it (restartable like any prepare)."""
    return Path(cfg.cache.dir) / "staging" / hashlib.sha256(cfg.dir.encode()).hexdigest()[:16]


def prepare_to_url(cfg: DataConfig) -> Path:
    """Prepares `cfg` in a local staging directory, then uploads it to the URL data.dir, manifest last.

    A tokenizer path inside the URL (the default, ${data.dir}/tokenizer) is staged alongside the shards; a
    local tokenizer path is used as it is (e.g. one BPE shared by several datasets).
    """
    from data.prepare import prepare_dataset

    stage = staging_dir(cfg)
    url = cfg.dir.rstrip("/")
    tokenizer_path = cfg.tokenizer.path
    if is_url(tokenizer_path):
        if not tokenizer_path.startswith(url + "/"):
            raise DatasetError(
                f"data.tokenizer.path={tokenizer_path!r}: a trained tokenizer is read locally or from inside "
                f"data.dir={url!r}; put it in either"
            )
        tokenizer_path = str(stage / tokenizer_path[len(url) + 1 :])
    local = dataclasses.replace(
        cfg, dir=str(stage), tokenizer=dataclasses.replace(cfg.tokenizer, path=tokenizer_path)
    )
    prepare_dataset(local)
    upload_dataset(stage, url)
    print(f"uploaded {stage} -> {url}")
    return stage
