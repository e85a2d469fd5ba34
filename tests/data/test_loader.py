"""TokenLoader: ranks split one global stream, see every window once per epoch, epochs reshuffle, and a
resumed job (same or another world size, same global batch) continues the uninterrupted stream exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.config import DataConfig
from data.loader import TokenLoader
from data.shards import DatasetError
from data.spec import LoaderSpec

SEQ = 64


def loaders(cfg: DataConfig, world: int, micro: int, seed: int = 7, **kw: object) -> list[TokenLoader]:
    return [
        TokenLoader(cfg.dir, LoaderSpec("train", SEQ, micro, seed, dp_rank=rank, dp_size=world, **kw))
        for rank in range(world)
    ]


def close(group: list[TokenLoader]) -> None:
    for loader in group:
        loader.close()


def take_steps(group: list[TokenLoader], accum: int, steps: int) -> list[np.ndarray]:
    """Per optimizer step, the inputs of every micro-step and rank in global order: [global batch, SEQ]."""
    out = []
    for _ in range(steps):
        rows = []
        for _ in range(accum):
            for loader in group:
                inputs, targets = next(loader)
                assert inputs.shape == targets.shape == (loader.micro_batch, SEQ)
                assert inputs.dtype == targets.dtype == torch.int64
                rows.append(inputs.numpy())
        out.append(np.concatenate(rows))
    return out


def all_windows(cfg: DataConfig) -> np.ndarray:
    loader = TokenLoader(cfg.dir, LoaderSpec("train", SEQ, 1, 0, shuffle=False, prefetch=0))
    return loader._data.windows(np.arange(loader.num_sequences))[:, :-1]


def sorted_rows(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort(rows.T[::-1])]


def test_targets_are_inputs_shifted_by_one_token(prepared: DataConfig) -> None:
    loader = TokenLoader(prepared.dir, LoaderSpec("train", SEQ, 4, 0, shuffle=False, prefetch=0))
    inputs, targets = next(loader)
    window = loader._data.tokens(0, SEQ + 1)
    assert inputs[0].tolist() == window[:-1].tolist() and targets[0].tolist() == window[1:].tolist()
    assert torch.equal(inputs[1:, 0], targets[:-1, -1])  # packed windows share one boundary token


def test_two_ranks_see_every_window_exactly_once_per_epoch_and_epochs_reshuffle(prepared: DataConfig) -> None:
    group = loaders(prepared, world=2, micro=8)
    n = group[0].num_sequences
    steps = -(-2 * n // group[0].global_batch)
    stream = np.concatenate(take_steps(group, accum=1, steps=steps))
    close(group)
    reference = sorted_rows(all_windows(prepared))
    epoch0, epoch1 = stream[:n], stream[n : 2 * n]
    np.testing.assert_array_equal(sorted_rows(epoch0), reference)
    np.testing.assert_array_equal(sorted_rows(epoch1), reference)
    assert (epoch0 != epoch1).any(axis=1).mean() > 0.9  # a different order, not the same one again
    assert group[0].state_dict()["epoch"] == group[1].state_dict()["epoch"] == steps * 16 // n


def test_same_seed_same_stream_other_seed_other_stream(prepared: DataConfig) -> None:
    a, b, c = (loaders(prepared, 1, 4, seed=s)[0] for s in (1, 1, 2))
    first = [take_steps([x], 1, 3) for x in (a, b, c)]
    close([a, b, c])
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.array_equal(first[0], first[2])


def test_background_prefetch_yields_the_same_batches_as_on_demand(prepared: DataConfig) -> None:
    threaded, direct = loaders(prepared, 1, 4, prefetch=3)[0], loaders(prepared, 1, 4, prefetch=0)[0]
    np.testing.assert_array_equal(take_steps([threaded], 1, 20), take_steps([direct], 1, 20))
    close([threaded])


# (world, micro_batch, accumulation) before and after; the global batch (12 windows) stays the same.
RESUMES = {
    "2->2": ((2, 3, 2), (2, 3, 2)),
    "2->1": ((2, 6, 1), (1, 6, 2)),
    "1->2": ((1, 4, 3), (2, 6, 1)),
    "2->3": ((2, 3, 2), (3, 2, 2)),
}


@pytest.mark.parametrize("case", list(RESUMES))
def test_resume_mid_epoch_on_any_world_size_continues_the_uninterrupted_stream(
    prepared: DataConfig, case: str
) -> None:
    (w1, m1, a1), (w2, m2, a2) = RESUMES[case]
    n = loaders(prepared, 1, 1)[0].num_sequences
    before = n // 12 - 3  # resume a few steps before the epoch ends, then run into the next epoch
    after = 8
    uninterrupted = loaders(prepared, w1, m1)
    expected = take_steps(uninterrupted, a1, before + after)
    close(uninterrupted)

    first = loaders(prepared, w1, m1)
    got = take_steps(first, a1, before)
    states = [loader.state_dict() for loader in first]
    close(first)
    assert all(s == states[0] for s in states)  # the cursor is global: every rank saves the same state
    assert states[0]["cursor"] == before * 12 and states[0]["epoch"] == 0

    second = loaders(prepared, w2, m2)
    for loader in second:
        loader.load_state_dict(states[0])
    got += take_steps(second, a2, after)
    close(second)
    assert second[0].state_dict()["epoch"] == 1
    for step, (want, have) in enumerate(zip(expected, got, strict=True)):
        np.testing.assert_array_equal(have, want, err_msg=f"optimizer step {step}")


def test_load_state_dict_drops_prefetched_batches(prepared: DataConfig) -> None:
    loader = loaders(prepared, 1, 4, prefetch=4)[0]
    take_steps([loader], 1, 2)
    state = loader.state_dict()
    expected = take_steps([loader], 1, 3)
    loader.load_state_dict(state)
    np.testing.assert_array_equal(take_steps([loader], 1, 3), expected)
    loader.close()


def test_validation_is_sequential_and_reset_restarts_it(prepared: DataConfig) -> None:
    loader = TokenLoader(prepared.dir, LoaderSpec("val", SEQ, 2, 0, shuffle=False))
    first = take_steps([loader], 1, 3)
    loader.reset()
    again = take_steps([loader], 1, 3)
    loader.close()
    np.testing.assert_array_equal(first, again)
    windows = loader._data.windows(np.arange(6))[:, :-1]
    np.testing.assert_array_equal(np.concatenate(first), windows)


def test_fingerprint_mismatch_on_resume_is_an_error_unless_allowed(prepared: DataConfig) -> None:
    loader = loaders(prepared, 1, 4, prefetch=0)[0]
    state = {**loader.state_dict(), "cursor": 40, "fingerprint": "0" * 64}
    with pytest.raises(
        DatasetError, match=r"fingerprint 0000000000000000\.\.\. .*allow_fingerprint_mismatch=true"
    ):
        loader.load_state_dict(state)
    assert loader.cursor == 0
    loader.load_state_dict(state, allow_fingerprint_mismatch=True)
    assert loader.cursor == 40


def test_resume_with_another_seed_is_an_error(prepared: DataConfig) -> None:
    loader = loaders(prepared, 1, 4, seed=1, prefetch=0)[0]
    with pytest.raises(ValueError, match=r"seed=2 but this loader has seed=1"):
        loader.load_state_dict({**loader.state_dict(), "seed": 2})


def test_loader_attributes_come_from_the_manifest(prepared: DataConfig) -> None:
    loader = loaders(prepared, 1, 4, prefetch=0)[0]
    assert loader.vocab_size == 512 and loader.eot_token == 511 and len(loader.fingerprint) == 64
    assert loader.num_sequences == (loader._data.num_tokens - 1) // SEQ


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pin_memory_on_cuda_gives_page_locked_batches(prepared: DataConfig) -> None:
    loader = loaders(prepared, 1, 4, pin_memory=True)[0]
    inputs, targets = next(loader)
    loader.close()
    assert inputs.is_pinned() and targets.is_pinned()
