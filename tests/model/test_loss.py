"""The chunked LM loss (model.loss_chunk_tokens) against the whole-logits loss: same value, same gradients,
and never the whole [tokens, vocab] logits alive at once."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from model import ModelConfig, Transformer

CFG = ModelConfig(
    name="test", vocab_size=512, d_model=32, n_heads=4, head_dim=8, ffn_hidden=64, max_seq_len=32
)


def loss_and_grads(chunk: int, tie: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(CFG, loss_chunk_tokens=chunk, tie_embeddings=tie))
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, CFG.vocab_size, (3, 20), generator=gen)
    targets = torch.randint(0, CFG.vocab_size, (3, 20), generator=gen)
    loss = model(tokens, targets=targets)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("chunk", [7, 16, 60])  # 60 = every token of the batch: one chunk
def test_chunked_loss_matches_whole_logits_loss_and_gradients(chunk, tie):
    whole_loss, whole_grads = loss_and_grads(0, tie)
    loss, grads = loss_and_grads(chunk, tie)
    # fp32: only the order of the sums differs (per-chunk sums, then one division by the token count)
    torch.testing.assert_close(loss, whole_loss, rtol=1e-6, atol=1e-6)
    for name, grad in whole_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


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
