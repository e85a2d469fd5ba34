"""Training on CUDA through the same entry point: NCCL, FSDP2 with the bf16 policy, compiled blocks, fused
AdamW, MFU from the device table (lent-GPU runs only)."""

from __future__ import annotations

import math

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.usefixtures("data_root"),
]


def test_fsdp_bf16_compiled_training_on_cuda(tmp_path, jobs):
    run_dir = tmp_path / "run"
    proc = jobs.train(
        run_dir,
        "parallel=fsdp",
        "parallel.compile=true",
        "parallel.activation_checkpointing=every_k",
        "trainer.device=cuda",
        "trainer.micro_batch=8",
        "trainer.global_batch_tokens=512",
        "trainer.max_steps=12",
        nproc=1,
    )
    assert "1 x cuda [fsdp]" in proc.stdout
    rows = jobs.train_rows(run_dir)
    assert all(math.isfinite(row["loss"]) for row in rows.values())
    assert rows[12]["loss"] < rows[1]["loss"]
    assert rows[12]["peak_mem_gb"] > 0
    name = torch.cuda.get_device_name()
    if any(known in name for known in ("A100", "H100", "H200", "B200")):
        assert 0 < rows[12]["mfu"] < 1
    # the checkpoint written on CUDA in bf16-policy FSDP resumes in one CPU process
    jobs.train(run_dir, "parallel=single", "trainer.device=cpu", "trainer.max_steps=14")
    assert sorted(jobs.train_rows(run_dir))[-1] == 14
