"""Autoregressive sampling with per-layer KV caches (h_kv heads each, see model/kv_cache.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .transformer import Transformer


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Next token [B] from last-position logits [B, vocab]: argmax at temperature 0, else a softmax sample of
    logits / temperature restricted to the top_k largest (all when top_k is None) and then to the nucleus:
    the fewest most likely tokens whose probabilities sum to at least top_p (all when top_p is None)."""
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must be in (0, 1] or None")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        if top_k <= 0:
            raise ValueError(f"top_k={top_k} must be a positive integer or None")
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens more likely than it already reach top_p (the first always stays)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: Transformer,
    tokens: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    top_p: float | None = None,
    vocab_limit: int | None = None,
) -> torch.Tensor:
    """tokens [B, N] -> [B, N + max_new_tokens]: one prefill pass, then one cached step per new token.

    `vocab_limit`: draw only ids below it, e.g. the tokenizer's vocabulary when the model's embedding has more
    rows (model.vocab_size may exceed it; those ids decode to nothing)."""
    if vocab_limit is not None and not 0 < vocab_limit <= model.cfg.vocab_size:
        raise ValueError(f"vocab_limit={vocab_limit} must be in [1, model.vocab_size={model.cfg.vocab_size}]")
    batch, prompt = tokens.shape
    total = prompt + max_new_tokens
    if total > model.cfg.max_seq_len:
        raise ValueError(f"prompt {prompt} + max_new_tokens {max_new_tokens} exceed model.max_seq_len")
    caches = model.new_kv_caches(batch, total)
    out = tokens
    logits = model(tokens, caches)[:, -1]
    for step in range(max_new_tokens):
        if vocab_limit is not None:
            logits[:, vocab_limit:] = float("-inf")
        nxt = sample_next(logits, temperature, top_k, generator, top_p)
        out = torch.cat([out, nxt[:, None]], dim=1)
        if step + 1 < max_new_tokens:
            logits = model(nxt[:, None], caches)[:, -1]
    return out
