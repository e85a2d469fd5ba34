"""The language-model loss: LM head + cross-entropy, over the whole micro-batch or fused in chunks of tokens.

The whole path materialises [tokens, vocab] logits and their fp32 copy (8 x 2048 x 50304 x 4 bytes = 3.3 GB
for a 1.3b micro-batch), and autograd keeps them for the backward. The chunked path (Liger's and OLMo-core's
fused linear cross-entropy) never holds more than `chunk_tokens` x vocab logits: its forward takes one chunk
at a time, computes the logits in the head's compute dtype, the fp32 cross-entropy and at once its gradient
with respect to those logits, turns that into the chunk's input gradient and adds it to the head's weight
gradient (accumulated in fp32), and drops the logits. The backward only scales the two gradients by the
incoming gradient. Same matmuls as the whole path (forward, input grad, weight grad), so no extra FLOPs;
same loss and gradients up to fp32 summation order.

Tensor parallel: the trainer shards the head's weight over the vocabulary and hands the head the gathered
(replicated) hidden states as DTensors (train/tensor_parallel.py), and runs forward and backward inside
`loss_parallel()`. The code below then runs unchanged on DTensors: each chunk's logits stay vocab-sharded,
the softmax and its gradient are loss_parallel's, the weight gradient stays sharded and the input gradient
comes back as a partial sum that the head's input redistribution reduces. No rank holds full-vocabulary
logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def lm_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int = 0
) -> torch.Tensor:
    """Mean next-token cross-entropy (fp32) of the head `weight` [vocab, D] applied to hidden [..., D],
    against targets [...]. chunk_tokens=0 projects all tokens at once; > 0 fuses head and loss that many
    tokens at a time (see above)."""
    hidden, targets = hidden.flatten(0, -2), targets.flatten()
    if chunk_tokens <= 0:
        # Logits may come back in bf16; the softmax and the mean are taken in fp32.
        return F.cross_entropy(F.linear(hidden, weight).float(), targets)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _FusedLinearCrossEntropy.apply(hidden, weight, targets, chunk_tokens)
    with torch.no_grad():  # evaluation: the loss alone, no gradient computed
        return _chunked_loss(hidden, weight, targets, chunk_tokens, None)


class LMHead(nn.Linear):
    """The untied LM head: `head(h)` -> logits [..., vocab]; `head(h, targets)` -> the mean loss, whole or
    chunked. A module call either way, so hooks on the head (a tensor-parallel plan, FSDP) see both."""

    def __init__(self, d_model: int, vocab_size: int, loss_chunk_tokens: int) -> None:
        super().__init__(d_model, vocab_size, bias=False)
        self.loss_chunk_tokens = loss_chunk_tokens

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        if targets is None:
            return super().forward(hidden)
        return lm_cross_entropy(hidden, self.weight, targets, self.loss_chunk_tokens)


class _Grads:
    """The gradients the fused forward accumulates: per-chunk input grads and the fp32 weight grad."""

    def __init__(self, need_hidden: bool, need_weight: bool) -> None:
        self.need_hidden, self.need_weight = need_hidden, need_weight
        self.hidden: list[torch.Tensor] = []
        self.weight: torch.Tensor | None = None


def _chunked_loss(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int, grads: _Grads | None
) -> torch.Tensor:
    """The mean loss (fp32, no graph), one chunk of tokens at a time; with `grads`, adds each chunk's
    gradients to it."""
    total = targets.numel()
    loss_sum = None
    for h, t in zip(hidden.split(chunk_tokens), targets.split(chunk_tokens), strict=True):
        logits = F.linear(h, weight)
        if grads is None:
            loss = F.cross_entropy(logits.float(), t, reduction="sum")
            del logits
        else:
            loss, grad_logits = _loss_and_logits_grad(logits, t, total)
            del logits
            if grads.need_hidden:
                grads.hidden.append(grad_logits.mm(weight))
            if grads.need_weight:
                if grads.weight is None:
                    grads.weight = grad_logits.t().mm(h).float()
                elif grads.weight.dtype == grad_logits.dtype:  # fp32 compute: no temporary [vocab, D]
                    grads.weight.addmm_(grad_logits.t(), h)
                else:
                    grads.weight.add_(grad_logits.t().mm(h))
            del grad_logits  # before the next chunk's logits: one chunk's buffers at a time
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    return loss_sum / total


def _loss_and_logits_grad(
    logits: torch.Tensor, targets: torch.Tensor, total: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk's summed loss (fp32) and the gradient of the mean loss with respect to its logits,
    (softmax - onehot) / total tokens, computed in fp32 and returned in the logits' dtype (as the whole path's
    backward has it)."""
    if hasattr(logits, "placements"):
        # A DTensor (tensor parallel; model/ does not import torch.distributed, so known by its placements):
        # vocab-sharded under loss_parallel, whose softmax across ranks only torch's log-softmax / NLL ops
        # and their backward implement.
        with torch.enable_grad():
            z = logits.detach().float().requires_grad_()
            loss = F.cross_entropy(z, targets, reduction="sum")
            (grad,) = torch.autograd.grad(loss / total, z)
        return loss.detach(), grad.to(logits.dtype)
    # Plain tensors: the same maths in place on one fp32 buffer (the logits themselves in fp32), where
    # autograd's log-softmax and NLL would hold four.
    z = logits.float()
    target_logits = z.gather(1, targets[:, None]).squeeze(1)
    row_max = z.amax(dim=-1, keepdim=True)
    sum_exp = z.sub_(row_max).exp_().sum(dim=-1, keepdim=True)
    loss = (row_max + sum_exp.log()).squeeze(1).sub_(target_logits).sum()
    z.div_(sum_exp * total)  # softmax / total
    z.scatter_add_(1, targets[:, None], z.new_full((targets.numel(), 1), -1.0 / total))
    return loss, z.to(logits.dtype)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Forward: the mean loss, and both gradients computed chunk by chunk; backward: those, scaled."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens):  # noqa: ANN001, ANN205 (autograd's signature)
        grads = _Grads(hidden.requires_grad, weight.requires_grad)
        loss = _chunked_loss(hidden, weight, targets, chunk_tokens, grads)
        ctx.dtypes = hidden.dtype, weight.dtype
        ctx.grad_hidden = torch.cat(grads.hidden) if grads.hidden else None
        ctx.grad_weight = grads.weight  # fp32 until scaled
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):  # noqa: ANN001, ANN205
        grad_hidden, grad_weight = ctx.grad_hidden, ctx.grad_weight
        if grad_hidden is None and grad_weight is None:
            raise RuntimeError(
                "the chunked LM loss (model.loss_chunk_tokens > 0) computes its gradients once, in the "
                "forward: a second backward through it needs a new forward (or model.loss_chunk_tokens=0)"
            )
        ctx.grad_hidden = ctx.grad_weight = None  # scaled in place and handed over: not kept after
        # The gradients were taken for d(loss) = 1; grad_loss is 1 / grad_accum in training.
        hidden_dtype, weight_dtype = ctx.dtypes
        if grad_hidden is not None:
            grad_hidden = grad_hidden.mul_(grad_loss).to(hidden_dtype)
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_loss).to(weight_dtype)
        return grad_hidden, grad_weight, None, None
