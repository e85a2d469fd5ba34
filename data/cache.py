"""ShardCache: shards of dataset URLs on local disk, named by sha256, within one bound per directory.

Every loader and process that uses a directory shares its bound (data.cache.max_gb): the space in use is read
from the directory itself, cached shards plus the downloads in flight, whose temporary files are created at
their full size before the download starts. The directory's files change only under an exclusive flock on
`<dir>/.lock` (reserve and evict, rename into place); a reader checks and memory-maps a shard under the
shared lock, so no process evicts a file between another's check and its map (a mapped file keeps its pages
after unlink). A shard evicted right after its download is simply fetched again.

A download goes to a temporary file, is hashed, and is renamed into place only when its sha256 matches the
manifest; its downloader uses it (maps it) before releasing the lock, so another process's eviction cannot
take it away first. A cached file is checked again on every open the way local shards are (`use`, e.g.
data/verify.py's stamp keyed on inode, size, mtime and ctime): a file altered on disk is downloaded once
more, and a second failure names the shard. Recency is the mtime of a 0-byte marker beside each shard
(`.<sha>.used`), touched on use, so the shard's own mtime and ctime (its verified stamp) stay as they were.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from data.objectstore import DEFAULT_TIMEOUT_S, retrying
from data.shards import DatasetError

T = TypeVar("T")

CHUNK = 8 << 20
"""Bytes per read while downloading (hashed as they arrive)."""
LOCK = ".lock"
EVICTED_RETRIES = 3
"""Downloads of one shard that other processes may evict before it is opened, before giving up."""


def _alive(temporary: str) -> bool:
    """Whether the process that names a download temporary (.<sha>.tmp<pid>.<thread>) still runs."""
    try:
        os.kill(int(temporary.split(".tmp")[1].split(".")[0]), 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def _size(path: Path) -> int:
    """The file's size, 0 when it vanished meanwhile."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class ShardCache:
    """Verified shards on local disk, named by sha256, at most `max_bytes` per directory."""

    def __init__(
        self,
        root: str | Path,
        max_bytes: int,
        retries: int = 3,
        backoff_s: float = 0.5,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        """retries: attempts per remote call; timeout_s: how long one call may wait for the server."""
        if max_bytes <= 0:
            raise DatasetError(f"data.cache.max_gb gives {max_bytes} bytes; expected a positive size")
        if retries < 1:
            raise DatasetError(f"data.cache.retries={retries}; expected at least 1 attempt")
        if timeout_s <= 0:
            raise DatasetError(f"data.cache.timeout_s={timeout_s}; expected a positive number of seconds")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.downloads = 0
        """Shards downloaded by this process (a re-download after eviction counts again)."""
        self._pending: dict[str, threading.Event] = {}
        self._pending_lock = threading.Lock()

    def path(self, sha256: str) -> Path:
        return self.root / f"{sha256}.bin"

    def _marker(self, sha256: str) -> Path:
        return self.root / f".{sha256}.used"

    @contextlib.contextmanager
    def locked(self, exclusive: bool) -> Iterator[None]:
        """The directory's flock: exclusive while its files change, shared while a shard is opened. A fresh
        open file per call, so threads of one process exclude each other as processes do."""
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # also releases the lock

    def open(
        self,
        fs: object,
        remote: str,
        sha256: str,
        size: int,
        use: Callable[[Path], T],
        keep: frozenset = frozenset(),
    ) -> T:
        """use(path of the verified shard), downloading it when absent; `use` runs under the shared lock (the
        file exists throughout) and raises DatasetError when the cached copy fails its checks. `keep`
        (sha256s) are not evicted to make room for it."""
        url = fs.unstrip_protocol(remote)
        failed: DatasetError | None = None
        for _ in range(EVICTED_RETRIES + 1):
            with self.locked(exclusive=False):
                path = self.path(sha256)
                if path.is_file():
                    self._marker(sha256).touch()
                    try:
                        return use(path)
                    except DatasetError as err:
                        if failed is not None:
                            raise DatasetError(
                                f"{url}: its cached copy {path} failed its check again after a fresh "
                                f"download ({err}); check the disk under data.cache.dir={self.root}"
                            ) from err
                        failed = err
            if failed is not None:  # altered on disk since it was verified: drop it, download it once more
                with self.locked(exclusive=True):
                    path.unlink(missing_ok=True)
            downloaded, result = self._download(fs, remote, sha256, size, keep, use)
            if downloaded:
                return result
        raise DatasetError(
            f"{url}: other processes evicted it {EVICTED_RETRIES} times right after its download; "
            f"data.cache.max_gb={self.max_bytes / 1e9:g} is too small for the jobs sharing {self.root}"
        )

    def _download(
        self, fs: object, remote: str, sha256: str, size: int, keep: frozenset, use: Callable[[Path], T]
    ) -> tuple[bool, T | None]:
        """(True, use(path)) once this thread downloaded the shard into place and used it before any process
        could evict it; (False, None) when another thread of this process was downloading it (it is in place
        now, unless evicted since)."""
        with self._pending_lock:
            event = self._pending.get(sha256)
            mine = event is None
            if mine:
                event = self._pending[sha256] = threading.Event()
        if not mine:
            event.wait()
            return False, None
        tmp: Path | None = None
        url = fs.unstrip_protocol(remote)
        try:
            tmp = self._reserve(sha256, size, keep | {sha256})
            try:
                retrying(
                    f"downloading {url}",
                    self.retries,
                    self.backoff_s,
                    lambda: self._fetch_into(fs, remote, sha256, tmp),
                )
            except FileNotFoundError:
                raise DatasetError(
                    f"{url}: the shard is not in the bucket although the dataset's manifest lists it; the "
                    "dataset was changed or deleted after upload. Upload it again (`python -m data.prepare "
                    "data.dir=<url>`) or point data.dir at a complete copy"
                ) from None
            with self.locked(exclusive=True):  # used before another process may evict it
                path = self.path(sha256)
                os.replace(tmp, path)
                self._marker(sha256).touch()
                self.downloads += 1
                try:
                    return True, use(path)
                except DatasetError as err:
                    raise DatasetError(f"{url}: fails its check right after download: {err}") from err
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            with self._pending_lock:
                self._pending.pop(sha256).set()

    def _fetch_into(self, fs: object, remote: str, sha256: str, tmp: Path) -> None:
        digest = hashlib.sha256()
        with fs.open(remote, "rb", block_size=CHUNK) as src, open(tmp, "r+b") as dst:
            for block in iter(lambda: src.read(CHUNK), b""):
                digest.update(block)
                dst.write(block)
            dst.truncate()  # the reservation may be longer than the object
        if digest.hexdigest() != sha256:
            raise DatasetError(
                f"{fs.unstrip_protocol(remote)}: downloaded bytes have sha256 {digest.hexdigest()[:16]}... "
                f"but the manifest records {sha256[:16]}...; the shard was not cached. The object changed or "
                "is damaged: prepare and upload the dataset again"
            )

    def _reserve(self, sha256: str, size: int, keep: frozenset) -> Path:
        """Evicts least recently used shards until `size` bytes fit beside the cached shards and every
        process's downloads in flight, then creates the download's temporary file at that size."""
        with self.locked(exclusive=True):
            cached: dict[str, int] = {}
            used = 0
            for entry in os.scandir(self.root):
                name = entry.name
                if name.endswith(".bin") and not name.startswith("."):
                    cached[name[:-4]] = _size(Path(entry.path))
                elif name.startswith(".") and ".tmp" in name:
                    if _alive(name):  # another download in progress: its space is taken
                        used += _size(Path(entry.path))
                    else:  # a download killed half way: never visible, never complete
                        Path(entry.path).unlink(missing_ok=True)
            used += sum(cached.values())

            def last_use(sha: str) -> float:
                marker = self._marker(sha)
                try:
                    return marker.stat().st_mtime
                except FileNotFoundError:
                    return 0.0

            for sha in sorted(cached, key=last_use):
                if used + size <= self.max_bytes:
                    break
                if sha in keep:
                    continue
                used -= cached[sha]
                self.path(sha).unlink(missing_ok=True)  # an open memory map keeps its pages until closed
                self._marker(sha).unlink(missing_ok=True)
            tmp = self.root / f".{sha256}.tmp{os.getpid()}.{threading.get_ident()}"
            with open(tmp, "wb") as f:
                f.truncate(size)
            return tmp
