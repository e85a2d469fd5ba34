"""Run under torchrun by test_e2e_tensor_parallel: builds the model as `python -m train` does for the given
overrides and writes, per rank, which global heads each sharded projection holds on this rank.

The heads are found from the weights' values, by matching this rank's rows against the full model that one
process initialises from the same seed (parallel.init=rank0 gives every layout those weights), so a plan that
put rows elsewhere than its config says is caught.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from conf import compose_run_config
from model import Transformer
from train.parallel import build_model, init_distributed, shutdown_distributed


def _heads(local: torch.Tensor, full: torch.Tensor, rows_per_head: int) -> list[int]:
    """Global indices of the heads (blocks of rows_per_head rows of `full`) that `local` holds, in order."""
    heads = []
    for start in range(0, local.shape[0], rows_per_head):
        block = local[start : start + rows_per_head]
        match = [
            h
            for h in range(full.shape[0] // rows_per_head)
            if torch.equal(block, full.view(-1, rows_per_head, full.shape[1])[h])
        ]
        assert len(match) == 1, f"rows {start}.. of this rank match heads {match} of the full weight"
        heads.append(match[0])
    return heads


def main(out_dir: Path, overrides: list[str]) -> None:
    world = int(os.environ["WORLD_SIZE"])
    cfg = compose_run_config(overrides, world_size=world)
    info = init_distributed(cfg.parallel, "cpu")
    try:
        model, _ = build_model(cfg.model, cfg.parallel, info, cfg.run.seed)
        torch.manual_seed(cfg.run.seed)
        full = Transformer(cfg.model)  # one process's init, as parallel.init=rank0 reproduces it
        d = cfg.model.head_dim
        report = {}
        for name, width in (("q_proj", d), ("k_proj", d), ("v_proj", None), ("lambda_proj", 1)):
            local_module = getattr(model.layers[0].attention, name, None)
            if local_module is None:
                continue
            full_weight = getattr(full.layers[0].attention, name).weight
            local_weight = local_module.weight.to_local()
            if width is None:  # V1's values are 2d wide
                width = 2 * d if cfg.model.attention == "diff_v1" else d
            report[name] = _heads(local_weight, full_weight, width)
        (out_dir / f"rank{info.rank}.json").write_text(json.dumps(report))
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
