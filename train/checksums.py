"""sha256 of every file of a checkpoint (or an export), written when it is published, checked before a load.

`<checkpoint>/checksums.json` maps each file name (DCP's shards, its .metadata, config.yaml) to its size and
sha256; it must cover every file of the directory: a file it does not list, or a listed file that is gone,
refuses the checkpoint like a changed byte. An export's `export_checksums.json` covers its weights, config and
tokenizer files (train/export.py). Sizes are compared first (a truncated file fails without reading it);
files are hashed on a few threads, since hashlib releases the GIL on large buffers (about 0.8 GB/s per
core with SHA-NI).
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CHECKSUMS_FILE = "checksums.json"
_CHUNK = 16 << 20
_THREADS = 4


class ChecksumError(RuntimeError):
    """A checkpoint's files differ from the checksums written when it was saved (or it has none)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_all(paths: list[Path]) -> list[str]:
    with ThreadPoolExecutor(min(_THREADS, max(1, len(paths)))) as pool:
        return list(pool.map(_sha256, paths))


def write_checksums(directory: Path, names: list[str] | None = None, listing: str = CHECKSUMS_FILE) -> None:
    """Records size and sha256 of `names` in `directory` (default: every file now there) in `listing`; call
    once all of them are written."""
    if names is None:
        names = [p.name for p in directory.iterdir() if p.is_file() and p.name != listing]
    files = [directory / name for name in sorted(names)]
    digests = _hash_all(files)
    entries = {p.name: {"size": p.stat().st_size, "sha256": d} for p, d in zip(files, digests, strict=True)}
    tmp = directory / f".{listing}.tmp"
    tmp.write_text(json.dumps({"algorithm": "sha256", "files": entries}, indent=1) + "\n")
    tmp.replace(directory / listing)


def _read_listing(path: Path, escape: str) -> dict[str, dict]:
    if not path.is_file():
        raise ChecksumError(
            f"{path.parent} has no {path.name} (written before checksums existed, or not by this "
            f"framework); {escape} loads it unverified"
        )
    try:
        entries = json.loads(path.read_text())["files"]
        if not isinstance(entries, dict):
            raise TypeError(f"'files' is a {type(entries).__name__}")
    except (ValueError, KeyError, TypeError) as err:
        raise ChecksumError(f"{path} is not a checksum listing: {err}") from err
    if not entries:
        raise ChecksumError(f"{path} lists no files: an empty listing vouches for nothing")
    return entries


def verify_checksums(
    directory: Path,
    listing: str = CHECKSUMS_FILE,
    covered: set[str] | None = None,
    escape: str = "checkpoint.verify=false",
) -> None:
    """Raises ChecksumError naming the first file that is missing, cut short, altered, or not listed.

    `covered`: the names the listing must hold when present (default: every file of `directory`), so a
    listing with an entry removed vouches for nothing it left out. `escape` names the setting that skips
    the check, for the message about a missing listing."""
    path = directory / listing
    entries = _read_listing(path, escape)
    present = {p.name for p in directory.iterdir() if p.is_file() and p.name != listing}
    for name in sorted((present if covered is None else present & covered) - set(entries)):
        raise ChecksumError(f"{directory / name} is not listed in {path}: it was added or its entry removed")
    files = []
    for name, entry in sorted(entries.items()):
        if Path(name).name != name:
            raise ChecksumError(f"{path} lists {name!r}, which is not a file of {directory}")
        file = directory / name
        if not file.is_file():
            raise ChecksumError(f"{file} is missing (listed in {listing})")
        size = file.stat().st_size
        if size != entry["size"]:
            raise ChecksumError(f"{file} is {size} bytes, {entry['size']} when saved: truncated or altered")
        files.append((file, entry["sha256"]))
    digests = _hash_all([file for file, _ in files])
    for (file, expected), actual in zip(files, digests, strict=True):
        if actual != expected:
            raise ChecksumError(
                f"{file} has sha256 {actual[:16]}..., {expected[:16]}... when saved: its bytes changed"
            )
