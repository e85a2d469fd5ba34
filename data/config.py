"""Configs for the data path: where text comes from, how it is tokenized, where shards live."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from errors import ConfigError


@dataclass
class SourceConfig:
    kind: str = "stdlib"
    """stdlib (the running Python's standard library .py files; offline everywhere) | text | jsonl | parquet
    | hf."""
    paths: list[str] = field(default_factory=list)
    """Glob patterns of local files, for text / jsonl / parquet."""
    text_field: str = "text"
    """Field holding a document's text, for jsonl / parquet / hf."""
    hf_path: str = ""
    """Hugging Face dataset name, e.g. HuggingFaceFW/fineweb-edu (kind=hf)."""
    hf_name: str | None = None
    """Hugging Face dataset config name (kind=hf)."""
    split: str = "train"
    """Hugging Face split (kind=hf)."""
    streaming: bool = True
    """Stream a Hugging Face dataset instead of downloading it whole (kind=hf)."""
    hf_data_files: list[str] = field(default_factory=list)
    """Files passed to load_dataset's data_files (kind=hf), e.g. local files with hf_path=json or parquet."""
    max_docs: int | None = None
    """Stop after this many documents (None: the whole source)."""


@dataclass
class TokenizerConfig:
    name: str = "bpe"
    """bpe (a byte-level BPE trained on the corpus and saved as .tiktoken) | a tiktoken encoding: gpt2,
    cl100k_base, o200k_base (loaded from tiktoken's cache: TIKTOKEN_CACHE_DIR when offline)."""
    vocab_size: int = 8192
    """Vocabulary size of a trained BPE, special tokens included (a named encoding: only names data.dir)."""
    path: str = "${data.dir}/tokenizer"
    """Where a trained BPE is saved and loaded from (a .tiktoken file plus a JSON beside it)."""
    train_bytes: int = 20_000_000
    """How many bytes of the corpus the BPE trainer reads."""


@dataclass
class CacheConfig:
    dir: str = "${oc.env:DIFFV2_CACHE,.cache/shards}"
    """Local directory of shards downloaded from a data.dir URL (s3://, gs://, file://), named by sha256."""
    max_gb: float = 50.0
    """Most disk the cache may use, in GB (1e9 bytes); least recently used shards are deleted first."""
    retries: int = 3
    """Attempts per remote call (a shard download, the manifest) before a dropped connection or a timeout
    becomes an error."""
    timeout_s: float = 60.0
    """Seconds one remote call may wait for the server (connect, and each read) before it is retried: a
    frozen server ends the job with an error naming the URL instead of hanging it."""
    lookahead: int = 4
    """Micro-batches ahead whose shards are downloaded in the background."""


@dataclass
class MixtureSourceConfig:
    dir: str = "???"
    """Prepared dataset directory of this source (every source of a mixture shares one tokenizer)."""
    weight: float = 1.0
    """Relative share of training windows (normalised over the sources); finite and > 0."""


@dataclass
class DataConfig:
    name: str = "stdlib"
    """Dataset name, for run names and reports."""
    dir: str = (
        "${oc.env:DIFFV2_DATA,.cache/data}/${data.name}-${data.tokenizer.name}${data.tokenizer.vocab_size}"
    )
    """Directory of the token shards and their manifest: a local path, or an fsspec URL (s3://bucket/path,
    gs://..., file://...) that prepare uploads to and training reads through data.cache."""
    source: SourceConfig = field(default_factory=SourceConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    shard_tokens: int = 2_000_000
    """Tokens per shard file."""
    val_fraction: float = 0.01
    """Fraction of documents held out for validation (chosen by a hash of the document index)."""
    num_workers: int = 0
    """Tokenizer worker processes for prepare; 0 = all cores."""
    prefetch: int = 2
    """Batches the loader prepares ahead in a background thread."""
    allow_fingerprint_mismatch: bool = False
    """Resume even if the checkpoint's dataset fingerprint differs from the shards on disk."""
    prepare_if_missing: bool = True
    """Training prepares the dataset (and tokenizer) when its manifest is missing."""
    cache: CacheConfig = field(default_factory=CacheConfig)
    """Where shards of a data.dir URL are kept locally (data/cache.py)."""
    mixture: dict[str, MixtureSourceConfig] = field(default_factory=dict)
    """Train on several prepared datasets by weight, name -> {dir, weight} (data/mixture.py); empty: data.dir
    alone. The sources must exist already (prepare_if_missing covers data.dir only)."""
    verify_shards: bool = True
    """Check each shard against the manifest's sha256 (and its token ids against the vocabulary) before
    first use; a pass is remembered per machine in $DIFFV2_VERIFY_CACHE (default
    ~/.cache/diffv2/verified-shards)."""


def validate_data_config(cfg: DataConfig) -> None:
    """Raises errors.ConfigError naming the first data.* value that cannot run, at start-up: every value that
    is knowable from the config alone (the data's own files are checked when they are read)."""
    from data.blocks import block_counts  # numpy: only when a config is checked

    positive = {
        "data.shard_tokens": cfg.shard_tokens,
        "data.cache.max_gb": cfg.cache.max_gb,
        "data.cache.retries": cfg.cache.retries,
        "data.cache.timeout_s": cfg.cache.timeout_s,
        "data.tokenizer.vocab_size": cfg.tokenizer.vocab_size,
        "data.tokenizer.train_bytes": cfg.tokenizer.train_bytes,
    }
    for field_name, value in positive.items():
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{field_name}={value}: expected a positive number")
    if int(cfg.cache.max_gb * 1e9) <= 0:
        raise ConfigError(
            f"data.cache.max_gb={cfg.cache.max_gb}: less than one byte; expected a positive size"
        )
    at_least_zero = {
        "data.num_workers": (cfg.num_workers, "0 (all cores) or a positive count of processes"),
        "data.prefetch": (cfg.prefetch, "0 (no background thread) or more batches"),
        "data.cache.lookahead": (cfg.cache.lookahead, "0 (no background downloads) or more micro-batches"),
    }
    for field_name, (value, expected) in at_least_zero.items():
        if value < 0:
            raise ConfigError(f"{field_name}={value}: expected {expected}")
    if not 0 <= cfg.val_fraction < 1:
        raise ConfigError(
            f"data.val_fraction={cfg.val_fraction}: expected a fraction in [0, 1) of documents held out"
        )
    if cfg.source.max_docs is not None and cfg.source.max_docs <= 0:
        raise ConfigError(
            f"data.source.max_docs={cfg.source.max_docs}: expected a positive count, or null for all"
        )
    if not str(cfg.dir).strip():
        raise ConfigError("data.dir is empty; expected a directory or a URL (s3://bucket/path)")
    for name, source in cfg.mixture.items():
        if "://" in str(source.dir):
            raise ConfigError(
                f"data.mixture.{name}.dir={source.dir!r}: mixture sources are read from local directories; "
                "a URL works as data.dir of a single dataset (copy the source locally)"
            )
    if cfg.mixture:
        block_counts(sorted((name, s.weight) for name, s in cfg.mixture.items()), error=ConfigError)
