"""Putting a locally prepared dataset at a URL: where prepare stages it (`staged_config`) and the upload,
shards and tokenizer files first, the manifest last (its presence means complete)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from data.config import DataConfig
from data.objectstore import filesystem, is_url, retrying
from data.shards import MANIFEST, DatasetError


def upload_dataset(local_dir: str | Path, url: str, retries: int = 3) -> None:
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
        retrying(
            f"uploading {url}/{rel}", retries, 0.5, lambda p=path, r=rel: fs.put_file(str(p), f"{root}/{r}")
        )
    payload = json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n"
    retrying(f"uploading {url}/{MANIFEST}", retries, 0.5, lambda: fs.pipe_file(f"{root}/{MANIFEST}", payload))


def staging_dir(cfg: DataConfig) -> Path:
    """Where `prepare` builds a dataset bound for a URL before uploading it (restartable like any prepare)."""
    return Path(cfg.cache.dir) / "staging" / hashlib.sha256(cfg.dir.encode()).hexdigest()[:16]


def staged_config(cfg: DataConfig) -> DataConfig:
    """`cfg` with data.dir moved to its staging directory. A tokenizer path inside the URL (the default,
    ${data.dir}/tokenizer) is staged alongside the shards; a local tokenizer path is used as it is (e.g. one
    BPE shared by several datasets)."""
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
    return dataclasses.replace(
        cfg, dir=str(stage), tokenizer=dataclasses.replace(cfg.tokenizer, path=tokenizer_path)
    )
