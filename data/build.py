"""The loaders' front door for training: `ensure_data` (rank 0, before the loaders open) and `build_loader`
(the loader the data config describes, for one LoaderSpec)."""

from __future__ import annotations

from data.blocks import block_counts
from data.config import DataConfig
from data.loader import StreamLoader, TokenLoader
from data.mixture import MixtureLoader, mixture_sources
from data.objectstore import is_url
from data.prepare import ensure_dataset, prepare_to_url
from data.remote import MissingManifest, cache_from_config, read_remote_manifest
from data.spec import LoaderSpec


def build_loader(cfg: DataConfig, spec: LoaderSpec) -> StreamLoader:
    """The loader `cfg` describes: a MixtureLoader over data.mixture when it names sources, else a TokenLoader
    over data.dir (a URL through the shard cache data.cache describes)."""
    if cfg.mixture:
        return MixtureLoader(mixture_sources(cfg.mixture), spec)
    cache = cache_from_config(cfg.cache) if is_url(cfg.dir) else None
    return TokenLoader(cfg.dir, spec, cache=cache, lookahead=cfg.cache.lookahead)


def ensure_data(cfg: DataConfig) -> None:
    """Rank 0's check before training: a mixture's sources are opened (errors name the source); a single
    dataset (a directory, or a URL whose manifest is missing) is prepared when missing and allowed."""
    if not cfg.mixture and is_url(cfg.dir):
        try:
            read_remote_manifest(cfg.dir, cfg.cache.retries, timeout_s=cfg.cache.timeout_s)
        except MissingManifest:
            if not cfg.prepare_if_missing:
                raise
            prepare_to_url(cfg)
        return
    if not cfg.mixture:
        ensure_dataset(cfg)
        return
    sources = mixture_sources(cfg.mixture)
    block_counts([(s.name, s.weight) for s in sources])
    for source in sources:
        MixtureLoader._open(source, "train", 1)
