"""parallel.activation_checkpointing=selective: the same loss and gradients as none, and activation memory
between none and full (measured with torch's MemTracker on real CPU tensors, through train.parallel)."""

from __future__ import annotations

import pytest
import torch
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils.flop_counter import FlopCounterMode

from model import ModelConfig
from train.config import ParallelConfig
from train.loop import lm_loss
from train.parallel import DistInfo, build_model

CFG = ModelConfig(name="test", vocab_size=256, d_model=64, n_layers=3, n_heads=4, head_dim=16, max_seq_len=64)
CPU = DistInfo(rank=0, world_size=1, device=torch.device("cpu"), mesh=None)


def step(mode: str) -> tuple[torch.Tensor, dict[str, torch.Tensor], int, int]:
    """Loss, gradients, peak activation bytes and matmul FLOPs of one forward + backward at this
    checkpointing."""
    pcfg = ParallelConfig(activation_checkpointing=mode, ac_every=2)
    model, _ = build_model(CFG, pcfg, CPU, seed=0)
    tokens = torch.randint(0, CFG.vocab_size, (4, 64), generator=torch.Generator().manual_seed(0))
    tracker = MemTracker()
    tracker.track_external(model)
    with tracker, FlopCounterMode(display=False) as flops:
        loss = lm_loss(model, tokens[:, :-1], tokens[:, 1:])
        loss.backward()
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    grads = {name.replace("._checkpoint_wrapped_module", ""): p.grad for name, p in model.named_parameters()}
    return loss.detach(), grads, peak["Activation"], flops.get_total_flops()


@pytest.mark.parametrize("mode", ["selective", "full", "every_k"])
def test_checkpointing_gives_the_loss_and_gradients_of_none(mode):
    loss, grads, *_ = step("none")
    checkpointed_loss, checkpointed_grads, *_ = step(mode)
    torch.testing.assert_close(checkpointed_loss, loss, rtol=0, atol=0)  # the forward is the same code
    assert checkpointed_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_selective_checkpointing_memory_lies_between_none_and_full_and_recomputes_no_matmul():
    (_, _, none_mem, none_flops), (_, _, sel_mem, sel_flops), (_, _, full_mem, full_flops) = (
        step(mode) for mode in ("none", "selective", "full")
    )
    assert full_mem < sel_mem < none_mem
    assert sel_mem < 0.8 * none_mem  # the elementwise outputs it drops are a real share, not noise
    assert sel_flops == none_flops < full_flops  # matmul and attention outputs are kept, not recomputed
