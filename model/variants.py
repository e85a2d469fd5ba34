"""The attention variants by `model.attention` name: each is one module (model/attention_<name>.py) with its
`AttentionVariant` (model/attention.py) and one preset (conf/attention/<name>.yaml).

Adding a variant: write its module, list it here, add its name to model/config.py's `Attention` choices (the
config layer reads those without importing torch) and its preset.
"""

from __future__ import annotations

from errors import ConfigError

from .attention import AttentionModule, AttentionVariant
from .attention_baseline import VARIANT as BASELINE
from .attention_diff_v1 import VARIANT as DIFF_V1
from .attention_diff_v2 import VARIANT as DIFF_V2
from .config import ModelConfig

# `from .x import` lines, not `from . import x`: the Hugging Face export's loader follows only the former.
VARIANTS: dict[str, AttentionVariant] = {v.name: v for v in (BASELINE, DIFF_V1, DIFF_V2)}


def attention_variant(cfg: ModelConfig) -> AttentionVariant:
    """The registered variant `cfg.attention` names."""
    name = str(cfg.attention)
    if name not in VARIANTS:
        raise ConfigError(f"model.attention={name!r} is not one of {sorted(VARIANTS)}")
    return VARIANTS[name]


def build_attention(cfg: ModelConfig, layer_idx: int) -> AttentionModule:
    """The attention module of block `layer_idx` for the configured variant."""
    return attention_variant(cfg).build(cfg, layer_idx)
