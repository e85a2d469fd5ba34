"""DIFF V2 / DIFF V1 / baseline decoder-only language models (pure PyTorch, no torch.distributed).

    from model import ModelConfig, Transformer, DiagnosticsRecorder, validate_model_config

Names load lazily: the config layer reads model.config in processes that never build a model (the launcher,
data.prepare), and those should not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import ModelConfig, validate_model_config
    from .diagnostics import DiagnosticsRecorder
    from .transformer import Transformer

_EXPORTS = {
    "ModelConfig": ".config",
    "validate_model_config": ".config",
    "DiagnosticsRecorder": ".diagnostics",
    "Transformer": ".transformer",
}
__all__ = ["DiagnosticsRecorder", "ModelConfig", "Transformer", "validate_model_config"]


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
