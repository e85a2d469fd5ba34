"""DiffV2ForCausalLM: the project's Transformer behind transformers' PreTrainedModel and GenerationMixin.

The weights sit under `model.` (the project's own parameter names below it), so the logits are the project
model's, bit for bit on the same device and dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from model.rope import rope_tables
from model.transformer import Transformer

from .configuration_diffv2 import DiffV2Config


class DiffV2ForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = DiffV2Config
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["TransformerBlock"]

    def __init__(self, config: DiffV2Config) -> None:
        super().__init__(config)
        self.model = Transformer(config.model_config())
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Every parameter comes from model.safetensors; only the non-persistent rotary tables (not saved, and
        # left empty by transformers' meta-device loading) are computed here.
        if isinstance(module, Transformer):
            cfg = module.cfg
            device = module.rope_cos.device
            cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, device=device)
            module.rope_cos.copy_(cos)
            module.rope_sin.copy_(sin)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.tok_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: object,  # transformers passes cache / return_dict / ... options this model does not use
    ) -> CausalLMOutput:
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError(
                "attention_mask has padding: this model takes no mask; pass unpadded prompts of equal length"
            )
        logits = self.model(input_ids)
        loss = None
        if labels is not None:  # causal LM convention: labels are the inputs, shifted here; -100 is ignored
            shifted = logits[:, :-1].flatten(0, 1).float()
            loss = F.cross_entropy(shifted, labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None, **kwargs: object
    ) -> dict[str, torch.Tensor | None]:
        # No cache: each step feeds the whole sequence, so generate works with any transformers cache API.
        return {"input_ids": input_ids, "attention_mask": attention_mask}
