"""The decoder-only language model: token embedding, pre-norm blocks, final RMSNorm, LM head.

Module names follow torchtitan/llama so the trainer can wrap each block (FSDP2, activation checkpointing,
compile): `tok_embeddings`, `layers` (TransformerBlock: `attention_norm`, `attention`, `ffn_norm`,
`feed_forward`), `norm`, `output`. With `tie_embeddings` there is no `output` module: the head reads
`tok_embeddings.weight` directly, so one parameter object exists and meta-device materialisation, sharding
and checkpoints never have to re-tie two.

Init (`init_weights`, also run by the constructor off the meta device):
- every weight matrix and the embedding ~ N(0, init_std);
- the two projections that write into the residual stream (attention `o_proj`, SwiGLU `w2`) ~
  N(0, init_std / sqrt(2 * n_layers)) (GPT-2 scaled init: the residual's variance stays ~flat with depth);
- DIFF V2's `lambda_proj` keeps PyTorch's default Linear init, as the reference (sigmoid(lambda) starts
  spread around 0.5); DIFF V1's lambda vectors ~ N(0, 0.1); all norm weights 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Rope
from .config import ModelConfig, validate_model_config
from .documents import Documents, build_documents, cached_documents, document_positions
from .feed_forward import build_feed_forward
from .flops import flops_per_token
from .generate import generate
from .kernel import flash_available
from .kv_cache import KVCache, KVCaches
from .loss import LMHead, lm_cross_entropy
from .moe import MoE
from .rope import rope_tables
from .variants import build_attention


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then + feed_forward(norm(.)); returns (x, aux_losses)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.attention_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attention = build_attention(cfg, layer_idx)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.feed_forward = build_feed_forward(cfg, layer_idx)

    def forward(
        self,
        x: torch.Tensor,
        rel_pos: Rope,
        cache: KVCache | None = None,
        docs: Documents | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The block's output and the auxiliary losses its feed-forward reported (empty for dense SwiGLU).

        The losses leave through the block's output, never a dict the caller passes down: FSDP2 hooks the
        tensors a block returns to gather its parameters before their backward runs, and rebuilds the
        containers passed into a wrapped module's forward, so a loss put into the caller's dict would be lost
        (and its gradient with it)."""
        aux_losses: dict[str, torch.Tensor] = {}
        x = x + self.attention(self.attention_norm(x), rel_pos, cache, docs)
        return x + self.feed_forward(self.ffn_norm(x), aux_losses), aux_losses


class Transformer(nn.Module):
    """`Transformer(cfg)(tokens [B, N]) -> logits [B, N, vocab]`; see the module docstring for init."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        validate_model_config(cfg)
        if cfg.doc_mask and cfg.eot_token < 0:
            raise ValueError(
                "model.doc_mask=true needs model.eot_token, the end-of-text token id that ends each document "
                "(python -m train takes it from the dataset)"
            )
        self.cfg = cfg
        # Module constructors draw their own default inits; discard those draws so that the weights depend
        # only on the RNG state when init_weights() runs: same seed -> same weights, direct or meta.
        with torch.random.fork_rng(devices=[]):
            self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.layers = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layers))
            self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
            self.output = (
                None if cfg.tie_embeddings else LMHead(cfg.d_model, cfg.vocab_size, cfg.loss_chunk_tokens)
            )
        # Non-persistent: not in checkpoints, recomputed by init_weights() after meta-device materialisation.
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        if self.tok_embeddings.weight.device.type != "meta":
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialises every parameter and the rotary tables in place, on whatever device they live."""
        cfg = self.cfg
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, device=self.rope_cos.device)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)
        residual_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
        nn.init.normal_(self.tok_embeddings.weight, std=cfg.init_std)
        for layer in self.layers:
            attn = layer.attention
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                nn.init.normal_(proj.weight, std=cfg.init_std)
            nn.init.normal_(attn.o_proj.weight, std=residual_std)
            attn.reset_variant_parameters()
            layer.feed_forward.init_weights(cfg.init_std, residual_std)
            layer.attention_norm.reset_parameters()
            layer.ffn_norm.reset_parameters()
        self.norm.reset_parameters()
        if self.output is not None:
            nn.init.normal_(self.output.weight, std=cfg.init_std)

    def forward(
        self,
        tokens: torch.Tensor,
        caches: KVCaches | None = None,
        targets: torch.Tensor | None = None,
        return_aux: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits [B, N, vocab] for tokens [B, N]; with `caches` (decoding) they follow the cached tokens, and
        with model.doc_mask the cached tokens' documents hold as in a full forward over all of them.

        `targets` [B, N]: return the mean cross-entropy instead of the logits (fp32 scalar), fused with the
        head in chunks of model.loss_chunk_tokens tokens (model/loss.py); inside forward, so that FSDP's
        and DDP's hooks see it.
        `return_aux`: return (that output, aux_losses), aux_losses the feed-forwards' auxiliary losses by name
        (a mixture of experts' `moe_aux/L<i>`, `moe_z/L<i>`, already weighted; empty for dense SwiGLU), for
        the trainer to add to the loss. They travel in the return value, block by block and then out of the
        model, so every data-parallel wrapper's hooks see them (model/transformer.py TransformerBlock)."""
        n = tokens.shape[1]
        start = caches.pos if caches else 0
        if start + n > self.cfg.max_seq_len:
            raise ValueError(f"{start + n} tokens exceed model.max_seq_len={self.cfg.max_seq_len}")
        rel_pos = (self.rope_cos[start : start + n], self.rope_sin[start : start + n])
        docs, positions = self._documents(tokens, caches) if self.cfg.doc_mask else (None, None)
        if positions is not None and self.cfg.doc_positions:  # [B, N]: RoPE restarts at every document
            rel_pos = (self.rope_cos[positions], self.rope_sin[positions])
        h = self.tok_embeddings(tokens)
        aux_losses: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            h, block_aux = layer(h, rel_pos, caches[i] if caches else None, docs)
            aux_losses.update(block_aux)
        h = self.norm(h)
        if self.output is not None:  # a module call, so hooks on `output` (a tensor-parallel plan) run
            out = self.output(h, targets)
        elif targets is None:
            out = F.linear(h, self.tok_embeddings.weight)
        else:
            out = lm_cross_entropy(h, self.tok_embeddings.weight, targets, self.cfg.loss_chunk_tokens)
        return (out, aux_losses) if return_aux else out

    def _documents(self, tokens: torch.Tensor, caches: KVCaches | None) -> tuple[Documents, torch.Tensor]:
        """The document boundaries and positions of `tokens`, once per forward, in the form the kernel will
        take: flash-attn's segments where it may run (CUDA, package present), else SDPA's mask; when decoding,
        a mask over every cached token (the caches keep the tokens, so a boundary in the prompt holds)."""
        eot = self.cfg.eot_token
        if caches is not None:
            if not isinstance(caches, KVCaches):
                raise TypeError(
                    "model.doc_mask=true decodes with model.new_kv_caches(...), which keep the tokens"
                )
            return cached_documents(caches.record(tokens), tokens.shape[1], eot)
        impl = self.cfg.attn_impl
        varlen = impl == "flash" or (impl == "auto" and tokens.is_cuda and flash_available())
        docs = build_documents(tokens, eot, for_varlen=varlen)
        return docs, document_positions(docs.ids)

    def new_kv_caches(self, batch: int, max_len: int) -> KVCaches:
        """One empty cache per layer, on the model's device and in its parameter dtype."""
        weight = self.tok_embeddings.weight
        layers = [
            layer.attention.kv_cache(batch, max_len, weight.device, weight.dtype) for layer in self.layers
        ]
        return KVCaches(layers, batch, max_len, weight.device)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Distinct parameters; `exclude_embeddings` leaves out the token embedding (and so a tied head)."""
        total = sum(p.numel() for p in self.parameters())
        return total - self.tok_embeddings.weight.numel() if exclude_embeddings else total

    def num_active_params(self) -> int:
        """Parameters one token uses: all of them less, in every MoE block, the routed experts it is not sent
        to (the MoE literature's "active" count: 30A3 = 30B total, 3B active)."""
        inactive = sum(m.inactive_params() for m in self.modules() if isinstance(m, MoE))
        return self.num_params() - inactive

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward) per token at this sequence length; see model/flops.py."""
        return flops_per_token(self.cfg, seq_len)

    # `model.generate(tokens, max_new_tokens, temperature=1.0, top_k=None, generator=None, top_p=None)`:
    # KV-cached decoding, greedy at temperature 0; see model/generate.py.
    generate = generate
