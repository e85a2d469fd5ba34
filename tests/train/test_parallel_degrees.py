"""Parallel degrees: presets resolve against the world size; layouts that cannot run are refused by name."""

from __future__ import annotations

import pytest

from conf import compose_run_config
from errors import ConfigError
from train.config import grad_accum_steps
from train.degrees import resolve_dims


@pytest.mark.parametrize(
    ("overrides", "world", "expected"),
    [
        (["parallel=single"], 1, (1, 1, 1)),
        (["parallel=ddp"], 4, (4, 1, 1)),
        (["parallel=fsdp"], 4, (1, 4, 1)),
        (["parallel=hsdp"], 8, (2, 4, 1)),
        (["parallel=fsdp", "parallel.tp=2"], 8, (1, 4, 2)),
        (["parallel=fsdp", "parallel.tp=2"], 2, (1, 1, 2)),
        (["parallel=hsdp", "parallel.tp=2"], 16, (2, 4, 2)),
    ],
)
def test_presets_resolve_to_degrees_multiplying_to_the_world_size(overrides, world, expected):
    cfg = compose_run_config(["model.n_kv_heads=4", "trainer.micro_batch=1", *overrides], world_size=world)
    dims = resolve_dims(cfg.parallel, world)
    assert (dims.dp_replicate, dims.dp_shard, dims.tp) == expected
    assert dims.world_size == world


@pytest.mark.parametrize(
    ("overrides", "world", "named"),
    [
        (["parallel=single"], 2, "parallel.dp_replicate=1 * parallel.dp_shard=1 * parallel.tp=1 = 1 ranks"),
        (["parallel=fsdp", "parallel.tp=3"], 4, "must divide world_size=4"),
        (["parallel.dp_shard=-1", "parallel.dp_replicate=-1"], 4, "at most one degree"),
        (["parallel=fsdp", "parallel.tp=4"], 4, "parallel.tp=4 must divide model.n_kv_heads=2"),
        (
            ["parallel=fsdp", "parallel.tp=2", "attention=diff_v1"],
            2,
            "parallel.tp=2 must divide model.n_kv_heads / 2",
        ),
        (
            ["parallel=fsdp", "parallel.tp=2", "attention=diff_v2_cross_group"],
            2,
            "model.pairing='cross_group'",
        ),
        (["parallel=fsdp", "parallel.tp=2", "model.tie_embeddings=true"], 2, "model.tie_embeddings"),
    ],
)
def test_layouts_that_cannot_run_are_refused_naming_the_fields(overrides, world, named):
    with pytest.raises(ConfigError, match=named.replace("*", r"\*").replace("(", r"\(")):
        compose_run_config(["trainer.micro_batch=1", *overrides], world_size=world)


def test_tp_ranks_share_batches_so_only_the_data_parallel_size_sets_accumulation():
    cfg = compose_run_config(
        ["parallel=fsdp", "parallel.tp=2", "trainer.seq_len=64", "trainer.micro_batch=4"]
        + ["trainer.global_batch_tokens=1024"],
        world_size=4,
    )
    assert grad_accum_steps(cfg.trainer, resolve_dims(cfg.parallel, 4).dp_size) == 2  # 1024 / (64 * 4 * 2)
