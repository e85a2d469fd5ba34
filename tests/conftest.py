"""What the whole suite shares: data=stdlib_small, prepared once per session (in this process), under a tmp
DIFFV2_DATA that every job of the session, in-process or a subprocess, reads; one intra-op thread."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """DIFFV2_DATA for the session, holding data=stdlib_small (300 stdlib files, 2k BPE)."""
    from omegaconf import OmegaConf

    from conf import compose
    from data import prepare_dataset

    root = tmp_path_factory.mktemp("data")
    previous = os.environ.get("DIFFV2_DATA")
    os.environ["DIFFV2_DATA"] = str(root)  # data.dir resolves against it, here and in every subprocess
    prepare_dataset(OmegaConf.to_object(compose(["data=stdlib_small"]).data))
    yield root
    if previous is None:
        os.environ.pop("DIFFV2_DATA", None)
    else:
        os.environ["DIFFV2_DATA"] = previous


@pytest.fixture(autouse=True)
def one_intra_op_thread() -> Iterator[None]:
    """Tests run tiny tensors: one intra-op thread is faster than two threads contending for 2 shared cores
    (10 ms for a 64-wide linear layer under load, against well under 1 ms)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
