"""The language-model loss: output projection + cross-entropy, whole or in chunks of tokens.

The whole path materialises [tokens, vocab] logits and their fp32 copy (8 x 2048 x 50304 x 4 bytes = 3.3 GB
for a 1.3b micro-batch), and autograd keeps them for the backward. The chunked path projects and scores
`chunk_tokens` tokens at a time under activation checkpointing: the forward keeps only each chunk's loss,
and the backward recomputes one chunk's logits at a time, so at most one chunk of logits ever exists. It
costs one more head matmul (the recompute); the loss and gradients equal the whole path's up to fp32
summation order.

Under tensor parallel the whole path is loss parallel: `project` is the model's own head call (`output(h)`,
so the TP plan's hooks run), its logits come back vocab-sharded, and the trainer runs forward and backward
inside `torch.distributed.tensor.parallel.loss_parallel()`. The chunked path splits flattened tokens, which
a sequence-parallel head input cannot take, so train/degrees.py refuses it with parallel.tp > 1 for now.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

Project = Callable[[torch.Tensor], torch.Tensor]
"""hidden [..., D] -> logits [..., vocab]: the model's LM head."""


def lm_cross_entropy(
    hidden: torch.Tensor, targets: torch.Tensor, project: Project, chunk_tokens: int = 0
) -> torch.Tensor:
    """Mean next-token cross-entropy (fp32) of hidden [B, N, D] against targets [B, N].

    chunk_tokens=0 projects all tokens at once; > 0 projects and scores that many at a time (see above)."""
    if chunk_tokens <= 0 or chunk_tokens >= targets.numel():
        # [B, N, D] reaches the head whole: a TP plan reads its sequence dim. Logits may come back in bf16;
        # the softmax and the mean are taken in fp32.
        return F.cross_entropy(project(hidden).float().flatten(0, 1), targets.flatten())
    hidden, targets = hidden.flatten(0, 1), targets.flatten()

    def chunk_loss_sum(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(project(h).float(), t, reduction="sum")

    # split, not slicing: one backward node concatenates the chunks' input gradients once, where slices
    # would each scatter into a zero tensor of the full hidden size.
    total = hidden.new_zeros((), dtype=torch.float32)
    for h, t in zip(hidden.split(chunk_tokens), targets.split(chunk_tokens), strict=True):
        if torch.is_grad_enabled():
            total = total + checkpoint(chunk_loss_sum, h, t, use_reentrant=False)
        else:
            total = total + chunk_loss_sum(h, t)
    return total / targets.numel()
