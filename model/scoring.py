"""Log-probabilities of tokens under the model: the one scorer behind perplexity and the lm-eval adapter.

Sequences longer than the model's context are scored in windows of at most `max_seq_len` tokens: window w
scores `stride` new tokens and sees up to `max_seq_len - stride` tokens before them as context
(stride = max_seq_len: disjoint windows, as lm-eval's rolling loglikelihood; smaller: more context, more
compute). Batches are right-padded: in a causal model padding after a sequence never changes its logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from errors import ConfigError
from model.transformer import Transformer


@dataclass
class Window:
    """Input tokens for one forward pass and how many of its last predictions are scored."""

    inputs: list[int]
    targets: list[int]
    scored: int
    """The last `scored` targets are new; earlier ones were scored by a previous window."""


def plan_windows(tokens: list[int], prefix: int, window: int, stride: int | None = None) -> list[Window]:
    """Windows that together score every token of `tokens` once, the first one after `prefix` (e.g. eot)."""
    stride = window if stride is None else stride
    if not 0 < stride <= window:
        raise ConfigError(f"stride={stride} must be in [1, window={window}]")
    seq = [prefix, *tokens]
    windows, done = [], 0
    while done < len(tokens):
        end = min(done + stride, len(tokens))
        start = max(0, end - window)
        windows.append(Window(seq[start:end], tokens[start:end], end - done))
        done = end
    return windows


@torch.no_grad()
def padded_log_softmax(model: Transformer, sequences: list[list[int]]) -> torch.Tensor:
    """float32 log-probabilities [B, longest, vocab] of right-padded `sequences` (one forward pass)."""
    device = model.tok_embeddings.weight.device
    batch = torch.zeros(len(sequences), max(len(s) for s in sequences), dtype=torch.long, device=device)
    for i, seq in enumerate(sequences):
        batch[i, : len(seq)] = torch.tensor(seq, device=device)
    return F.log_softmax(model(batch).float(), dim=-1)


def gather_targets(logp: torch.Tensor, targets: list[int]) -> torch.Tensor:
    """log p of targets[j] at row j of logp [N, vocab] (N >= len(targets)), as a CPU tensor."""
    index = torch.tensor(targets, device=logp.device)[:, None]
    return logp[: len(targets)].gather(1, index).squeeze(1).cpu()


def token_logprobs(
    model: Transformer, tokens: list[int], prefix: int, stride: int | None = None, batch_size: int = 8
) -> torch.Tensor:
    """log p of every token of `tokens` given all tokens before it (up to the context) and `prefix` first."""
    windows = plan_windows(tokens, prefix, model.cfg.max_seq_len, stride)
    scored = []
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        logp = padded_log_softmax(model, [w.inputs for w in chunk])
        for row, w in zip(logp, chunk, strict=True):
            scored.append(gather_targets(row, w.targets)[-w.scored :])
    return torch.cat(scored) if scored else torch.zeros(0)


def continuation_scores(
    model: Transformer, sequences: list[list[int]], n_continuation: list[int]
) -> list[tuple[float, bool]]:
    """(log p of the last n tokens of each sequence given the rest, whether each was the argmax): lm-eval's
    loglikelihood. Sequences longer than the context keep their last max_seq_len + 1 tokens."""
    window = model.cfg.max_seq_len
    inputs, targets = [], []
    for seq, n in zip(sequences, n_continuation, strict=True):
        if n > window:
            raise ConfigError(f"a continuation of {n} tokens does not fit the model's max_seq_len={window}")
        seq = seq[-(window + 1) :]
        inputs.append(seq[:-1])
        targets.append(seq[1:])
    logp = padded_log_softmax(model, inputs)
    out = []
    for row, tgt, n in zip(logp, targets, n_continuation, strict=True):
        # n may be 0: a continuation the tokenizer merged into the context's last token adds no token
        cont = row[len(tgt) - n : len(tgt)]
        expected = torch.tensor(tgt[len(tgt) - n :], dtype=torch.long, device=row.device)
        logprob = cont.gather(1, expected[:, None]).sum().item()
        out.append((logprob, bool((cont.argmax(dim=-1) == expected).all())))
    return out
