"""The fused chunked LM loss (model.loss_chunk_tokens) against the whole-logits loss: same value, same
gradients (also accumulated over micro-batches, also under bf16 autocast), the same matmuls (no recompute,
none at all for gradients under no_grad), and never the whole [tokens, vocab] logits alive at once."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from model import ModelConfig, Transformer
from model.loss import lm_cross_entropy

CFG = ModelConfig(
    name="test", vocab_size=512, d_model=32, n_heads=4, head_dim=8, ffn_hidden=64, max_seq_len=32
)


def loss_and_grads(chunk: int, tie: bool, bf16: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Two micro-batches accumulated as the trainer does (each loss / 2, then backward)."""
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(CFG, loss_chunk_tokens=chunk, tie_embeddings=tie))
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(2):
        tokens = torch.randint(0, CFG.vocab_size, (3, 20), generator=gen)
        targets = torch.randint(0, CFG.vocab_size, (3, 20), generator=gen)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = model(tokens, targets=targets)
        (loss / 2).backward()
        losses.append(loss.detach())
    return torch.stack(losses), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("chunk", [7, 16, 60])  # 60 = every token of the batch: one chunk
def test_chunked_loss_matches_whole_logits_loss_and_gradients(chunk, tie):
    whole_loss, whole_grads = loss_and_grads(0, tie)
    loss, grads = loss_and_grads(chunk, tie)
    # fp32: only the order of the sums differs (per-chunk sums, then one division by the token count)
    torch.testing.assert_close(loss, whole_loss, rtol=1e-6, atol=1e-6)
    for name, grad in whole_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_chunked_loss_under_bf16_autocast_matches_the_whole_path(tie):
    """bf16 logits and head matmuls in both paths; the chunked one adds its weight gradient over chunks
    in fp32 where the whole path rounds one matmul to bf16: they agree to bf16's precision, not bitwise."""
    whole_loss, whole_grads = loss_and_grads(0, tie, bf16=True)
    loss, grads = loss_and_grads(16, tie, bf16=True)
    torch.testing.assert_close(loss, whole_loss, rtol=1e-3, atol=1e-3)
    for name, grad in whole_grads.items():
        error = (grads[name] - grad).norm() / grad.norm()
        assert error < 2e-2, (name, error.item())


def addmm_flops(acc_shape, a_shape, b_shape, out_shape=None) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def head_loss_flops(chunk: int, grad: bool) -> int:
    """Matmul FLOPs of the LM head + loss: forward and backward, or forward alone under no_grad."""
    torch.manual_seed(0)
    hidden = torch.randn(60, CFG.d_model, requires_grad=True)
    weight = torch.randn(CFG.vocab_size, CFG.d_model, requires_grad=True)
    targets = torch.randint(0, CFG.vocab_size, (60,))
    # the chunked path adds each chunk's weight gradient in place (addmm_), which the counter does not know
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: addmm_flops}) as counter:
        with torch.set_grad_enabled(grad):
            loss = lm_cross_entropy(hidden, weight, targets, chunk)
        if grad:
            loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("chunk", [7, 60])
def test_chunked_loss_costs_the_matmuls_of_the_whole_path_and_none_for_gradients_under_no_grad(chunk):
    forward = 2 * 60 * CFG.d_model * CFG.vocab_size
    assert head_loss_flops(0, grad=True) == 3 * forward
    assert head_loss_flops(chunk, grad=True) == 3 * forward  # no recompute of the logits
    assert head_loss_flops(chunk, grad=False) == forward  # evaluation: no gradient computed


def test_whole_loss_is_the_cross_entropy_of_the_logits():
    torch.manual_seed(0)
    model = Transformer(CFG)
    tokens = torch.randint(0, CFG.vocab_size, (2, 8))
    targets = torch.randint(0, CFG.vocab_size, (2, 8))
    expected = F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
    torch.testing.assert_close(model(tokens, targets=targets), expected)


def largest_saved_or_live_tensor(chunk: int) -> int:
    """Elements of the largest tensor created during forward + backward of one loss."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(CFG, vocab_size=4096, loss_chunk_tokens=chunk)
    model = Transformer(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (4, 32))
    largest = 0

    class Watch(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal largest
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    largest = max(largest, t.numel())
            return out

    with Watch():
        model(tokens, targets=tokens).backward()
    return largest


def test_chunked_loss_never_creates_the_whole_logits():
    tokens, vocab = 4 * 32, 4096
    assert largest_saved_or_live_tensor(0) == tokens * vocab
    # 16 x vocab logits at a time: the largest tensor left is the head's weight (and its gradient)
    assert largest_saved_or_live_tensor(16) == CFG.d_model * vocab
