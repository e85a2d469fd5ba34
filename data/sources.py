"""Where documents come from: each source yields document texts in a fixed, deterministic order."""

from __future__ import annotations

import glob
import json
import sys
import sysconfig
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from data.config import SourceConfig
from data.shards import DatasetError

SOURCE_KINDS = ("stdlib", "text", "jsonl", "parquet", "hf")


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """The running interpreter's standard library .py files (no site-packages), sorted by relative path."""
    root = stdlib_root()
    skip = {"site-packages", "dist-packages"}
    files = [p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def expand_paths(patterns: list[str], field: str = "data.source.paths") -> list[Path]:
    """Every file the glob patterns match, sorted and without duplicates; a pattern matching nothing fails."""
    if not patterns:
        raise DatasetError(f"{field} is empty; expected glob patterns of local files, e.g. ['txt/**/*.txt']")
    files: set[Path] = set()
    for pattern in patterns:
        matches = [Path(m) for m in glob.glob(pattern, recursive=True) if Path(m).is_file()]
        if not matches:
            hint = " (it is a directory; add a file glob like /**/*.txt)" if Path(pattern).is_dir() else ""
            raise DatasetError(f"{field}: pattern {pattern!r} matches no files{hint}")
        files.update(matches)
    return sorted(files)


def _invalid_utf8(path: Path, line: int, offset: int, bad: bytes) -> DatasetError:
    return DatasetError(
        f"{path}:{line}: invalid UTF-8 at byte offset {offset} ({bad!r}); re-encode the file as "
        "UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or leave it out of data.source.paths. Replacing the bytes "
        "silently would train on text the file does not hold"
    )


def _decode_utf8(path: Path, raw: bytes) -> str:
    """`raw` as UTF-8, as it is (no newline translation: CRLF stays); invalid bytes are an error naming the
    file, the line and the byte offset."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise _invalid_utf8(path, line, err.start, raw[err.start : err.end]) from None


def _read_text(path: Path) -> str:
    return _decode_utf8(path, path.read_bytes())


def _read_stdlib(path: Path) -> str:
    # A few standard-library files are deliberately not UTF-8 (test/encoded_modules/*, the source-encoding
    # tests): their odd bytes become U+FFFD, as they always have, so the default corpus stays the same.
    return path.read_bytes().decode("utf-8", errors="replace")


def _text_field(row: object, field: str, where: str) -> str:
    if not isinstance(row, dict) or field not in row:
        keys = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise DatasetError(f"{where}: no text field {field!r} (data.source.text_field); found {keys}")
    value = row[field]
    if not isinstance(value, str):
        raise DatasetError(f"{where}: field {field!r} holds {type(value).__name__}, expected a string")
    return value


def _iter_jsonl(files: list[Path], field: str) -> Iterator[str]:
    for path in files:
        if path.suffix == ".json":
            try:
                rows = json.loads(_read_text(path))
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path}: not valid JSON ({err}); expected an array of objects") from err
            if not isinstance(rows, list):
                raise DatasetError(f"{path}: top level is a {type(rows).__name__}, expected an array")
            for i, row in enumerate(rows):
                yield _text_field(row, field, f"{path}[{i}]")
            continue
        # Undecodable bytes pass through as lone surrogates (surrogateescape), so each line can be checked
        # with its number and byte offset; newline="" keeps line ends as they are, so the offsets are exact.
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            offset = 0
            for lineno, line in enumerate(f, 1):
                try:
                    size = len(line.encode("utf-8"))
                except UnicodeEncodeError as err:
                    start = offset + len(line[: err.start].encode("utf-8", "surrogateescape"))
                    bad = line[err.start : err.end].encode("utf-8", "surrogateescape")
                    raise _invalid_utf8(path, lineno, start, bad) from None
                offset += size
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DatasetError(f"{path}:{lineno}: not a JSON object ({err})") from err
                yield _text_field(row, field, f"{path}:{lineno}")


def _iter_parquet(files: list[Path], field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    for path in files:
        pf = pq.ParquetFile(path)
        if field not in pf.schema_arrow.names:
            raise DatasetError(
                f"{path}: no column {field!r} (data.source.text_field); found {pf.schema_arrow.names}"
            )
        for batch in pf.iter_batches(columns=[field], batch_size=1024):
            yield from batch.column(0).to_pylist()


def _iter_hf(cfg: SourceConfig) -> Iterator[str]:
    import datasets

    if not cfg.hf_path:
        raise DatasetError("data.source.hf_path is empty; expected a dataset like HuggingFaceFW/fineweb-edu")
    ds = datasets.load_dataset(
        cfg.hf_path,
        cfg.hf_name,
        split=cfg.split,
        streaming=cfg.streaming,
        data_files=list(cfg.hf_data_files) or None,
    )
    for i, row in enumerate(ds):
        yield _text_field(row, cfg.text_field, f"{cfg.hf_path} ({cfg.split}) row {i}")


def _raw_documents(cfg: SourceConfig) -> Iterator[str]:
    if cfg.kind == "stdlib":
        return map(_read_stdlib, stdlib_files())
    if cfg.kind == "text":
        return map(_read_text, expand_paths(cfg.paths))
    if cfg.kind == "jsonl":
        return _iter_jsonl(expand_paths(cfg.paths), cfg.text_field)
    if cfg.kind == "parquet":
        return _iter_parquet(expand_paths(cfg.paths), cfg.text_field)
    if cfg.kind == "hf":
        return _iter_hf(cfg)
    raise DatasetError(f"data.source.kind={cfg.kind!r} is not known; expected one of {list(SOURCE_KINDS)}")


def iter_documents(cfg: SourceConfig) -> Iterator[str]:
    """The source's non-empty documents, in order, at most `cfg.max_docs` of them."""
    docs = (text for text in _raw_documents(cfg) if text)
    return islice(docs, cfg.max_docs) if cfg.max_docs is not None else docs


def count_documents(cfg: SourceConfig) -> int | None:
    """A cheap document count for the progress bar's ETA (None when unknown, e.g. a streamed dataset)."""
    count: int | None = None
    if cfg.kind == "stdlib":
        count = len(stdlib_files())
    elif cfg.kind == "text":
        count = len(expand_paths(cfg.paths))
    elif cfg.kind == "parquet":
        import pyarrow.parquet as pq

        count = sum(pq.ParquetFile(p).metadata.num_rows for p in expand_paths(cfg.paths))
    if cfg.max_docs is not None:
        count = cfg.max_docs if count is None else min(count, cfg.max_docs)
    return count


def describe_source(cfg: SourceConfig) -> dict[str, object]:
    """What the manifest records about where the text came from."""
    desc: dict[str, object] = {"kind": cfg.kind, "max_docs": cfg.max_docs}
    if cfg.kind == "stdlib":
        files = stdlib_files()
        desc |= {"root": str(stdlib_root()), "python": sys.version.split()[0], "files": len(files)}
    elif cfg.kind in ("text", "jsonl", "parquet"):
        files = expand_paths(cfg.paths)
        desc |= {"paths": list(cfg.paths), "files": len(files), "bytes": sum(p.stat().st_size for p in files)}
        if cfg.kind != "text":
            desc["text_field"] = cfg.text_field
    elif cfg.kind == "hf":
        desc |= {
            "hf_path": cfg.hf_path,
            "hf_name": cfg.hf_name,
            "split": cfg.split,
            "streaming": cfg.streaming,
            "hf_data_files": list(cfg.hf_data_files),
            "text_field": cfg.text_field,
        }
    return desc
