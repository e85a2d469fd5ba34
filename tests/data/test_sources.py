"""Sources yield the documents of local text / jsonl / json / parquet files, a Hugging Face dataset (read
here through `datasets` from local files, the same code path as a Hub dataset) and the stdlib corpus."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.config import SourceConfig
from data.shards import DatasetError
from data.sources import describe_source, iter_documents, stdlib_files

DOCS = ["first document\n", "zweites Dokument — ünïcödé\n", "第三个文档 🤖\n", "fourth\n\nwith blank lines\n"]


def write_jsonl(path: Path, docs: list[str]) -> None:
    path.write_text("".join(json.dumps({"id": i, "content": d}) + "\n" for i, d in enumerate(docs)))


def write_parquet(path: Path, docs: list[str]) -> None:
    pq.write_table(pa.table({"id": list(range(len(docs))), "content": docs}), path)


def test_text_glob_reads_one_document_per_file_in_sorted_path_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    for name, doc in zip(["b/2.txt", "a.txt", "b/1.txt", "c.txt"], DOCS, strict=True):
        (tmp_path / name).write_text(doc, encoding="utf-8")
    (tmp_path / "empty.txt").write_text("")  # empty documents are skipped
    cfg = SourceConfig(kind="text", paths=[str(tmp_path / "**/*.txt")])
    assert list(iter_documents(cfg)) == [DOCS[1], DOCS[2], DOCS[0], DOCS[3]]
    assert describe_source(cfg)["files"] == 5


def test_jsonl_and_json_array_read_the_named_text_field(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", DOCS[:2])
    (tmp_path / "b.json").write_text(json.dumps([{"content": d} for d in DOCS[2:]]))
    cfg = SourceConfig(kind="jsonl", paths=[str(tmp_path / "*.json*")], text_field="content")
    assert list(iter_documents(cfg)) == DOCS


def test_jsonl_row_without_the_text_field_names_file_and_line(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", DOCS)
    cfg = SourceConfig(kind="jsonl", paths=[str(tmp_path / "a.jsonl")], text_field="text")
    with pytest.raises(DatasetError, match=r"a\.jsonl:1: no text field 'text'.*\['content', 'id'\]"):
        list(iter_documents(cfg))


def test_parquet_reads_the_named_column_and_max_docs_bounds_it(tmp_path: Path) -> None:
    write_parquet(tmp_path / "part-0.parquet", DOCS[:3])
    write_parquet(tmp_path / "part-1.parquet", DOCS[3:])
    cfg = SourceConfig(kind="parquet", paths=[str(tmp_path / "*.parquet")], text_field="content")
    assert list(iter_documents(cfg)) == DOCS
    cfg.max_docs = 2
    assert list(iter_documents(cfg)) == DOCS[:2]


def test_parquet_without_the_column_names_file_and_columns(tmp_path: Path) -> None:
    write_parquet(tmp_path / "p.parquet", DOCS)
    cfg = SourceConfig(kind="parquet", paths=[str(tmp_path / "p.parquet")], text_field="text")
    with pytest.raises(DatasetError, match=r"p\.parquet: no column 'text'.*\['id', 'content'\]"):
        list(iter_documents(cfg))


@pytest.mark.parametrize("builder", ["json", "parquet"])
def test_hf_streaming_source_reads_documents_through_datasets(tmp_path: Path, builder: str) -> None:
    path = tmp_path / f"docs.{'jsonl' if builder == 'json' else 'parquet'}"
    (write_jsonl if builder == "json" else write_parquet)(path, DOCS)
    cfg = SourceConfig(
        kind="hf",
        hf_path=builder,
        hf_data_files=[str(path)],
        split="train",
        streaming=True,
        text_field="content",
    )
    assert list(iter_documents(cfg)) == DOCS


def test_stdlib_corpus_is_the_interpreters_standard_library_in_sorted_order() -> None:
    files = stdlib_files()
    root = Path(sysconfig.get_paths()["stdlib"])
    relative = [p.relative_to(root).as_posix() for p in files]
    assert relative == sorted(relative)
    assert "os.py" in relative and "json/__init__.py" in relative
    assert not any("site-packages" in r for r in relative)
    docs = list(iter_documents(SourceConfig(kind="stdlib", max_docs=3)))
    assert docs == [p.read_text(encoding="utf-8", errors="replace") for p in files[:3]]


def test_glob_matching_nothing_names_the_pattern(tmp_path: Path) -> None:
    cfg = SourceConfig(kind="text", paths=[str(tmp_path / "missing/*.txt")])
    with pytest.raises(
        DatasetError, match=r"data\.source\.paths: pattern '.*missing/\*\.txt' matches no files"
    ):
        list(iter_documents(cfg))


def test_unknown_source_kind_lists_the_known_ones() -> None:
    with pytest.raises(DatasetError, match=r"data\.source\.kind='ftp' is not known.*'parquet', 'hf'"):
        list(iter_documents(SourceConfig(kind="ftp")))


@pytest.mark.parametrize("name", ["b.txt", "b.json"])
def test_invalid_utf8_in_a_text_or_json_file_names_the_file_line_and_offset(
    tmp_path: Path, name: str
) -> None:
    (tmp_path / "a.txt").write_text("fine\n")
    prefix = b"line one\n" if name.endswith(".txt") else b'[{"text": "line one"},\n{"text": "'
    (tmp_path / name).write_bytes(prefix + b"caf\xe9 au lait" + (b"\n" if name.endswith(".txt") else b'"}]'))
    kind = "text" if name.endswith(".txt") else "jsonl"
    cfg = SourceConfig(kind=kind, paths=[str(tmp_path / name)])
    offset = len(prefix) + 3
    pattern = rf"b\.{name[2:]}:2: invalid UTF-8 at byte offset {offset} \(b'\\xe9'\)"
    with pytest.raises(DatasetError, match=pattern):
        list(iter_documents(cfg))


def test_stdlib_files_that_are_not_utf8_still_read_with_replacement_characters() -> None:
    # The default corpus must not change: these files are deliberately in other encodings.
    root = Path(sysconfig.get_paths()["stdlib"])
    odd = root / "test" / "encoded_modules" / "module_iso_8859_1.py"
    if odd not in stdlib_files():
        pytest.skip("this Python ships without its test package")
    files = stdlib_files()
    nonempty_before = sum(1 for p in files[: files.index(odd)] if p.stat().st_size)  # empty files are skipped
    docs = list(iter_documents(SourceConfig(kind="stdlib", max_docs=nonempty_before + 1)))
    assert docs[-1] == odd.read_bytes().decode("utf-8", errors="replace") and "\ufffd" in docs[-1]
