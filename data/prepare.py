"""`python -m data.prepare <hydra overrides>`: tokenize a corpus into train/val token shards plus a manifest.

Workers tokenize batches of documents in parallel; the parent keeps their order, so the shards are the same
for any number of workers. After each shard the position in the source is saved (write, then rename); a
rerun verifies the finished shards, skips the text they cover and continues, giving byte-identical files.
The manifest appears last, so its presence means the dataset is complete.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import tiktoken

import errors
from data.config import DataConfig
from data.encode import encode_batch, init_worker
from data.lock import dataset_write_lock
from data.objectstore import is_url
from data.shards import (
    MANIFEST,
    SPLITS,
    VERSION,
    DatasetError,
    atomic_write_json,
    dtype_for_vocab,
    manifest_fingerprint,
)
from data.sources import count_documents, describe_source, iter_documents
from data.tokenizer import encoding_fingerprint, load_tokenizer, save_bpe, tokenizer_files
from data.upload import staged_config, upload_dataset
from data.writer import SplitWriter, empty_split_state

PROGRESS = ".prepare_progress.json"
BATCH_CHARS = 1 << 18
"""Characters of text per worker task: big enough to amortise pickling, small enough to keep workers busy."""
BATCH_DOCS = 256


def is_validation_doc(index: int, fraction: float) -> bool:
    """Document `index` is a validation document when its hash falls below `fraction` (stable, streamable)."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(index.to_bytes(8, "little"), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2**64


def _settings(cfg: DataConfig, enc: tiktoken.Encoding | None) -> dict[str, object]:
    """Everything that decides the bytes of the shards; a rerun must match it to continue a prepare."""
    settings: dict[str, object] = {
        "format_version": VERSION,
        "source": asdict(cfg.source),
        "shard_tokens": cfg.shard_tokens,
        "val_fraction": cfg.val_fraction,
    }
    if enc is not None:
        settings["tokenizer"] = {
            "name": cfg.tokenizer.name,
            "n_vocab": enc.n_vocab,
            "fingerprint": encoding_fingerprint(enc),
        }
    return settings


def _check_settings(path: Path, found: dict, expected: dict) -> None:
    if found != expected:
        keys = sorted(k for k in expected.keys() | found.keys() if found.get(k) != expected.get(k))
        raise DatasetError(
            f"{path} was written with other settings (differing: {keys}); nothing was changed. "
            "Use another data.dir, or delete that directory to prepare it again"
        )


def _train_texts(cfg: DataConfig) -> Iterator[str]:
    """The first `tokenizer.train_bytes` bytes of training documents (validation documents stay unseen)."""
    seen = 0
    for index, text in enumerate(iter_documents(cfg.source)):
        if seen >= cfg.tokenizer.train_bytes:
            return
        if not is_validation_doc(index, cfg.val_fraction):
            seen += len(text.encode("utf-8"))
            yield text


def tokenizer_for(cfg: DataConfig) -> tiktoken.Encoding:
    """Loads the configured tokenizer; a `bpe` that does not exist yet is trained on the corpus and saved."""
    if cfg.tokenizer.name != "bpe" or any(f.exists() for f in tokenizer_files(cfg.tokenizer.path)):
        return load_tokenizer(cfg.tokenizer)
    texts = list(_train_texts(cfg))
    if not texts:
        raise DatasetError(
            f"the source {describe_source(cfg.source)} yielded no documents; nothing to prepare"
        )
    import tokenizers  # here, with the trainer: a machine that only reads shards need not have them

    from data.bpe import train_bpe

    print(f"training a {cfg.tokenizer.vocab_size}-token BPE on {sum(map(len, texts)) / 1e6:.1f}M characters")
    enc = train_bpe(texts, cfg.tokenizer.vocab_size)
    info = {"trainer": f"huggingface tokenizers {tokenizers.__version__}", "train_documents": len(texts)}
    save_bpe(enc, cfg.tokenizer.path, info)
    return enc


def _relative_to(path: Path, root: Path) -> str:
    """`path` relative to the dataset directory when inside it, so a moved dataset's manifest stays right."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _batches(docs: Iterator[tuple[int, str]]) -> Iterator[tuple[list[int], list[str]]]:
    indices: list[int] = []
    texts: list[str] = []
    chars = 0
    for index, text in docs:
        indices.append(index)
        texts.append(text)
        chars += len(text)
        if chars >= BATCH_CHARS or len(texts) >= BATCH_DOCS:
            yield indices, texts
            indices, texts, chars = [], [], 0
    if texts:
        yield indices, texts


def _encoded(
    batches: Iterator[tuple[list[int], list[str]]], enc: tiktoken.Encoding, workers: int
) -> Iterator[tuple[list[int], tuple]]:
    """Batches encoded in source order; at most a few batches per worker in flight, so a streamed corpus is
    never read far ahead of the shards (Pool.imap would read the whole input eagerly)."""
    if workers == 1:
        init_worker(enc)
        for indices, texts in batches:
            yield indices, encode_batch(texts)
        return
    # spawn, not fork: the trainer may call this with torch threads and a process group alive.
    with mp.get_context("spawn").Pool(workers, initializer=init_worker, initargs=(enc,)) as pool:
        pending: deque = deque()
        for indices, texts in batches:
            pending.append((indices, pool.apply_async(encode_batch, (texts,))))
            if len(pending) >= 4 * workers:
                indices, result = pending.popleft()
                yield indices, result.get()
        while pending:
            indices, result = pending.popleft()
            yield indices, result.get()


def _num_workers(cfg: DataConfig) -> int:
    if cfg.num_workers < 0:
        raise DatasetError(f"data.num_workers={cfg.num_workers}; expected 0 (all cores) or a positive count")
    return cfg.num_workers or len(os.sched_getaffinity(0))


def prepare_dataset(cfg: DataConfig, wait: bool = False) -> Path:
    """Tokenizes `cfg.source` into `cfg.dir` (shards + manifest) and returns the manifest path.

    Restartable: a rerun after a crash continues where the last finished shard ended; a rerun after success
    returns at once. A directory holding a dataset made with other settings is an error and is left as is.
    One prepare writes a directory at a time (data/lock.py): another one fails at once naming it, or with
    `wait` waits for it and then uses (or refuses) what it made.
    """
    out = Path(cfg.dir)
    if (out / MANIFEST).exists():
        return _finished(cfg, out)
    with dataset_write_lock(out, wait):
        if (out / MANIFEST).exists():  # finished by the prepare this one waited for
            return _finished(cfg, out)
        return _prepare_locked(cfg, out)


def _finished(cfg: DataConfig, out: Path) -> Path:
    """The manifest of a complete dataset, after checking it was made with `cfg`'s settings."""
    manifest_path = out / MANIFEST
    settings = _settings(cfg, tokenizer_for(cfg))
    _check_settings(manifest_path, json.loads(manifest_path.read_text()).get("settings", {}), settings)
    return manifest_path


def _resumed_progress(out: Path, settings: dict) -> dict:
    """What an earlier run into `out` wrote (refused when its settings differ), else a fresh start; the
    temporaries of a crashed run are removed (never visible, never complete)."""
    progress_path = out / PROGRESS
    for stale in out.glob(".*.tmp*"):
        stale.unlink()
    if progress_path.exists():
        progress = json.loads(progress_path.read_text())
        _check_settings(progress_path, progress.get("settings", {}), settings)
        return progress
    return {"settings": settings, "splits": {split: empty_split_state() for split in SPLITS}}


def _prepare_locked(cfg: DataConfig, out: Path) -> Path:
    enc = tokenizer_for(cfg)
    dtype_for_vocab(enc.n_vocab)  # a vocabulary no shard dtype holds fails here, before anything is written
    fingerprint = encoding_fingerprint(enc)
    settings = _settings(cfg, enc)
    progress_path = out / PROGRESS
    progress = _resumed_progress(out, settings)
    workers = _num_workers(cfg)

    def save_progress() -> None:
        atomic_write_json(progress_path, progress)

    writers = {
        split: SplitWriter(
            out, split, progress["splits"][split], cfg.shard_tokens, enc.n_vocab, fingerprint, save_progress
        )
        for split in SPLITS
    }
    for writer in writers.values():
        writer.verify_existing()

    from tqdm import tqdm  # here: training machines that only read prepared shards may lack it

    total_docs = count_documents(cfg.source)
    bar = tqdm(total=total_docs, unit="doc", desc=f"prepare {out.name}", dynamic_ncols=True, file=sys.stderr)
    docs_read = 0

    def wanted() -> Iterator[tuple[int, str]]:
        nonlocal docs_read
        for index, text in enumerate(iter_documents(cfg.source)):
            docs_read = index + 1
            split = "val" if is_validation_doc(index, cfg.val_fraction) else "train"
            if writers[split].wants(index):
                yield index, text

    start, tokens = time.perf_counter(), 0
    for indices, (lengths, flat) in _encoded(_batches(wanted()), enc, workers):
        pos = 0
        for index, length in zip(indices, lengths.tolist(), strict=True):
            split = "val" if is_validation_doc(index, cfg.val_fraction) else "train"
            writers[split].add(index, flat[pos : pos + length])
            pos += length
        tokens += pos
        bar.update(indices[-1] + 1 - bar.n)  # documents done, including ones an earlier run wrote
        rate = tokens / (time.perf_counter() - start)
        bar.set_postfix_str(f"{rate / 1e6:.2f}M tok/s, {tokens / 1e6:.1f}M tok")
    bar.update(docs_read - bar.n)
    bar.close()
    if docs_read == 0 and not progress["splits"]["train"]["shards"]:
        raise DatasetError(
            f"the source {describe_source(cfg.source)} yielded no documents; nothing to prepare"
        )
    for writer in writers.values():
        writer.finish(docs_read)
    save_progress()

    return _publish_manifest(cfg, out, enc, settings, progress["splits"])


def _publish_manifest(
    cfg: DataConfig, out: Path, enc: tiktoken.Encoding, settings: dict, split_states: dict
) -> Path:
    """Writes the manifest (the dataset's table of contents and its fingerprint) and drops the progress file:
    from this rename on, the dataset counts as complete."""
    splits = {
        split: {
            "shards": state["shards"],
            "tokens": sum(s["tokens"] for s in state["shards"]),
            "documents": state["documents"],
        }
        for split, state in split_states.items()
    }
    _check_no_empty_split(cfg, out, splits)
    manifest = {
        "format_version": VERSION,
        "settings": settings,
        "source": describe_source(cfg.source),
        "tokenizer": {
            "name": cfg.tokenizer.name,
            "n_vocab": enc.n_vocab,
            "eot_token": enc.eot_token,
            "fingerprint": settings["tokenizer"]["fingerprint"],
            "path": _relative_to(Path(cfg.tokenizer.path), out) if cfg.tokenizer.name == "bpe" else None,
        },
        "dtype": dtype_for_vocab(enc.n_vocab).name,
        "splits": splits,
    }
    manifest["fingerprint"] = manifest_fingerprint(manifest)
    manifest_path = out / MANIFEST
    atomic_write_json(manifest_path, manifest)
    (out / PROGRESS).unlink()
    train, val = splits["train"], splits["val"]
    print(
        f"prepared {out}: train {train['tokens']:,} tokens in {len(train['shards'])} shards, "
        f"val {val['tokens']:,} tokens"
    )
    return manifest_path


def _check_no_empty_split(cfg: DataConfig, out: Path, splits: dict) -> None:
    """Training reads both splits, so a split without tokens is a failed prepare, not a dataset."""
    documents = sum(split["documents"] for split in splits.values())
    for name, split in splits.items():
        if split["tokens"]:
            continue
        change = "raise" if name == "val" else "lower"
        raise DatasetError(
            f"{out}: the {name} split got 0 tokens ({split['documents']} of {documents} documents with "
            f"data.val_fraction={cfg.val_fraction}), and training needs both splits; {change} "
            "data.val_fraction or add documents to the source. No manifest was written: delete "
            f"{out} and prepare again with the new settings"
        )


def _cheap_settings(cfg: DataConfig, manifest: dict) -> tuple[dict, dict]:
    """(found, expected) settings that can be compared without loading the tokenizer, which for a named
    encoding may mean a download: the tokenizer is compared by name (and size, for a trained BPE)."""
    expected = {key: value for key, value in _settings(cfg, None).items() if key != "tokenizer"}
    found = {key: manifest.get("settings", {}).get(key) for key in expected}
    saved = manifest.get("settings", {}).get("tokenizer", {})
    expected["tokenizer"], found["tokenizer"] = cfg.tokenizer.name, saved.get("name")
    if cfg.tokenizer.name == "bpe":
        expected["n_vocab"], found["n_vocab"] = cfg.tokenizer.vocab_size, saved.get("n_vocab")
    return found, expected


def ensure_dataset(cfg: DataConfig) -> Path:
    """The manifest path; prepares the dataset first when it is missing and `cfg.prepare_if_missing`.

    Call it on one rank only; the others wait on a barrier, then open the finished manifest.
    """
    manifest_path = Path(cfg.dir) / MANIFEST
    if manifest_path.exists():
        _check_settings(manifest_path, *_cheap_settings(cfg, json.loads(manifest_path.read_text())))
        return manifest_path
    if not cfg.prepare_if_missing:
        raise DatasetError(
            f"{manifest_path} is missing and data.prepare_if_missing=false; "
            "run `python -m data.prepare` with the same data settings first"
        )
    return prepare_dataset(cfg, wait=True)


def prepare_to_url(cfg: DataConfig) -> Path:
    """Prepares `cfg` in a local staging directory, then uploads it to the URL data.dir, manifest last."""
    local = staged_config(cfg)
    prepare_dataset(local)
    upload_dataset(local.dir, cfg.dir.rstrip("/"), cfg.cache.retries)
    print(f"uploaded {local.dir} -> {cfg.dir.rstrip('/')}")
    return Path(local.dir)


@errors.reports_errors
def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(args):
        print(
            __doc__ + "\nExamples:\n  python -m data.prepare data=stdlib_small\n"
            "  python -m data.prepare data=local_text 'data.source.paths=[corpus/**/*.txt]'\n"
            "  python -m data.prepare data=fineweb_edu data.source.max_docs=100000"
        )
        return
    # The command composes the whole config (conf/config.yaml plus the command line) and keeps cfg.data:
    # data/ itself knows only its own section (tests/test_layers.py names this function as a command). A
    # credential URL in the overrides or the composed config is refused before anything is read or written.
    from omegaconf import OmegaConf

    from conf import compose
    from data.credentials import refuse_in_args, refuse_in_config

    refuse_in_args(args)  # before composing: a bad key's error would repeat the override's value
    data = compose(args).data
    refuse_in_config(OmegaConf.to_container(data, resolve=True))
    cfg: DataConfig = OmegaConf.to_object(data)  # type: ignore[assignment]
    if is_url(cfg.dir):  # object storage: prepare locally, then upload (data/upload.py)
        prepare_to_url(cfg)
    else:
        prepare_dataset(cfg)


if __name__ == "__main__":
    main()
