"""DiffV2Config: the project's ModelConfig (as a dict) plus the standard names transformers reads."""

from __future__ import annotations

from dataclasses import asdict

from transformers import PreTrainedConfig

from model.config import ModelConfig


class DiffV2Config(PreTrainedConfig):
    model_type = "diffv2"

    diffv2: dict | None = None
    """The project's ModelConfig fields (model/config.py): the one description of the architecture."""
    vocab_size: int = 8192
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 256
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    use_cache: bool = False
    """No HF cache: the wrapper re-runs the sequence each step (model.generate is the KV-cached path)."""
    tie_word_embeddings: bool = False
    """The model ties (or not) by itself (ModelConfig.tie_embeddings); transformers must not tie again."""

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, eot_token_id: int) -> DiffV2Config:
        """The config of an export of a model built from `cfg`, whose tokenizer ends documents with eot."""
        return cls(
            diffv2=asdict(cfg),
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.d_model,
            num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.n_kv_heads,
            max_position_embeddings=cfg.max_seq_len,
            bos_token_id=eot_token_id,
            eos_token_id=eot_token_id,
            pad_token_id=eot_token_id,
        )

    def model_config(self) -> ModelConfig:
        if self.diffv2 is None:
            raise ValueError("config.json has no 'diffv2' entry: python -m infer.export_hf did not write it")
        return ModelConfig(**self.diffv2)
