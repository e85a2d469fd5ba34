"""The data path: tokenizers, sources, `prepare` (text -> token shards) and the resumable loaders.

    from data import prepare_dataset, ensure_dataset, load_tokenizer, LoaderSpec, TokenLoader, MixtureLoader

Names load lazily so that tokenizer worker processes (spawned by prepare) never import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from data.loader import TokenLoader
    from data.mixture import MixtureLoader
    from data.prepare import ensure_dataset, prepare_dataset
    from data.shards import DatasetError
    from data.spec import LoaderSpec
    from data.tokenizer import load_tokenizer

_EXPORTS = {
    "TokenLoader": "data.loader",
    "LoaderSpec": "data.spec",
    "MixtureLoader": "data.mixture",
    "prepare_dataset": "data.prepare",
    "ensure_dataset": "data.prepare",
    "load_tokenizer": "data.tokenizer",
    "DatasetError": "data.shards",
}
__all__ = [
    "DatasetError",
    "LoaderSpec",
    "MixtureLoader",
    "TokenLoader",
    "ensure_dataset",
    "load_tokenizer",
    "prepare_dataset",
]


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
