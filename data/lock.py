"""One writer per dataset directory: `prepare` holds an exclusive lock on `<dir>/.prepare.lock` while it
trains the tokenizer, writes shards and publishes the manifest.

The lock is an flock on an open file, so it dies with its process (a killed prepare never leaves a stale
lock). The file is removed when the holder finishes, so a finished dataset directory holds no dotfiles; the
inode check below keeps a process that opened the old file just before its removal from believing it holds
the lock too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from data.shards import DatasetError

LOCK = ".prepare.lock"


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return "another process"
    return f"process {pid}" if pid else "another process"


def _try_lock(path: Path) -> int | None:
    """An fd holding the exclusive lock on `path`, or None while another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # locked a file its holder had just removed: try again on the current one


@contextlib.contextmanager
def dataset_write_lock(out: Path, wait: bool) -> Iterator[None]:
    """Holds the directory's prepare lock (creating `out`); with `wait`, waits for another holder to finish,
    otherwise fails at once naming it. A directory this call created and left empty is removed again."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(
            f"{out}: cannot create the dataset directory ({err.strerror}); point data.dir (or DIFFV2_DATA) "
            "at a writable place"
        ) from err
    path = out / LOCK
    fd = _try_lock(path)
    if fd is None and wait:
        print(f"waiting for {_holder(path)}, which is preparing {out}", flush=True)
        while fd is None:
            time.sleep(1.0)
            fd = _try_lock(path)
    if fd is None:
        raise DatasetError(
            f"{out}: {_holder(path)} is running `python -m data.prepare` into this directory; wait for it to "
            "finish (the dataset is then ready to use), or prepare into another data.dir"
        )
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):  # only succeeds when empty: nothing was written
                out.rmdir()
