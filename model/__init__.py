"""DIFF V2 / DIFF V1 / baseline decoder-only language models (pure PyTorch, no torch.distributed)."""

from model.config import ModelConfig, validate_model_config
from model.diagnostics import DiagnosticsRecorder
from model.transformer import Transformer

__all__ = ["DiagnosticsRecorder", "ModelConfig", "Transformer", "validate_model_config"]
