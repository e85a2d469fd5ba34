"""Remote calls to object storage: any fsspec URL (`s3://`, `gs://`, `file://`), each call bounded in time and
retried with backoff, so a dropped connection or a frozen server becomes an error naming the URL.

Credentials are whatever the filesystem's library reads from the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL for s3fs; GOOGLE_APPLICATION_CREDENTIALS for
gcsfs): nothing here reads, stores or prints them, and URLs with embedded credentials are refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from data.shards import DatasetError

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 60.0
"""Seconds one remote call may wait for the server (data.cache.timeout_s's default)."""


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


def _timeout_options(protocol: str, timeout_s: float) -> dict[str, object]:
    """Storage options that bound each request by `timeout_s` and leave retries to `retrying` (the
    libraries' own retry loops would multiply the wait of a frozen server by their attempts)."""
    if protocol in ("s3", "s3a"):
        return {
            "config_kwargs": {
                "connect_timeout": timeout_s,
                "read_timeout": timeout_s,
                "retries": {"max_attempts": 1, "mode": "standard"},
            }
        }
    if protocol in ("gs", "gcs"):
        return {"timeout": timeout_s}
    return {}


def filesystem(url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[object, str]:
    """(fsspec filesystem, path inside it) for `url`, each request bounded by `timeout_s`; the library
    reads credentials from the environment."""
    import fsspec

    _check_url(url)
    protocol = url.split("://", 1)[0]
    fs, path = fsspec.core.url_to_fs(url, **_timeout_options(protocol, timeout_s))
    if hasattr(fs, "retries"):  # s3fs retries a timed-out request 5 times itself
        fs.retries = 1
    return fs, path.rstrip("/")


def retrying(what: str, attempts: int, backoff_s: float, fn: Callable[[], T]) -> T:
    """fn() with retries on transient errors (a dropped connection, a timeout); a missing object is not
    transient and fails at once (FileNotFoundError, for the caller to name)."""
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
        f"{what}: failed {attempts} times (data.cache.retries, each call bounded by data.cache.timeout_s), "
        f"last error {type(last).__name__}: {last}"
    ) from last
