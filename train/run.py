"""One training job on every rank: process group, data, model, optimizer, resume, sinks, loop, export."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from data import TokenLoader, ensure_dataset
from train.checkpoint import Checkpointer, complete_checkpoints
from train.config import RunConfig
from train.export import export_model
from train.loop import LoopParts, Trainer, TrainingDiverged
from train.metrics import ConsoleSink, JsonlSink, MetricsLogger, WandbSink
from train.optim import LRSchedule, build_optimizer
from train.parallel import DistInfo, build_model, from_rank0, init_distributed, shutdown_distributed
from train.rundir import choose_resume, hold_run_dir, rank0_decides
from train.spikes import SpikeCounter
from train.state import Counters, TrainState
from train.validate import ConfigError, grad_accum_steps


class DatasetUnavailable(RuntimeError):
    """Rank 0 could not find or prepare the dataset."""


def _agree_run_dir(run_dir: str, info: DistInfo) -> None:
    """All ranks must write to one directory; a per-rank value (e.g. ${now:}) would split the run."""
    dirs: list[str | None] = [None] * info.world_size
    dist.all_gather_object(dirs, run_dir)
    if len(set(dirs)) > 1:
        raise ConfigError(
            f"run.dir differs between ranks: {sorted(set(dirs))}; it must not depend on time or rank"
        )


def _prepare_data(cfg: RunConfig, info: DistInfo) -> Path:
    """Rank 0 prepares the tokenizer and shards when missing; the others wait, then share its verdict."""
    error = None
    if info.is_main:
        try:
            ensure_dataset(cfg.data)
        except Exception as err:  # every rank must learn of it, or the others wait forever
            error = f"{type(err).__name__}: {err}"
    error = from_rank0(error, info)
    if error is not None:
        raise DatasetUnavailable(f"data.dir={cfg.data.dir}: {error}")
    return Path(cfg.data.dir)


def _loader(cfg: RunConfig, info: DistInfo, dataset_dir: Path, split: str) -> TokenLoader:
    """This rank's slice of the global stream: shuffled for train, in order (reset per eval) for val."""
    return TokenLoader(
        dataset_dir,
        split,
        seq_len=cfg.trainer.seq_len,
        micro_batch=cfg.trainer.micro_batch,
        rank=info.rank,
        world_size=info.world_size,
        seed=cfg.run.seed,
        shuffle=split == "train",
        prefetch=cfg.data.prefetch,
        pin_memory=info.device.type == "cuda",
    )


def _build_logger(
    cfg: RunConfig, info: DistInfo, run_dir: Path, counters: Counters, start_step: int
) -> MetricsLogger:
    if not info.is_main:
        return MetricsLogger([])
    sinks: list[Any] = [
        ConsoleSink(cfg.trainer.max_steps, start_step),
        JsonlSink(run_dir / "metrics.jsonl", start_step),
    ]
    if cfg.wandb.mode != "disabled":
        config = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
        sinks.append(WandbSink(cfg.wandb, cfg.run.name, run_dir, counters.wandb_id, config))
    return MetricsLogger(sinks)


def run_training(cfg: RunConfig, config_yaml: str) -> dict[str, Any]:
    """Runs the whole job on this rank; returns the final metrics (rank 0's view)."""
    info = init_distributed(cfg.parallel, cfg.trainer.device)
    try:
        with hold_run_dir(cfg.run, info):
            return _run(cfg, config_yaml, info)
    finally:
        shutdown_distributed()


def _run(cfg: RunConfig, config_yaml: str, info: DistInfo) -> dict[str, Any]:
    t = cfg.trainer
    _agree_run_dir(cfg.run.dir, info)
    run_dir = Path(cfg.run.dir)
    torch.manual_seed(cfg.run.seed)
    dataset_dir = _prepare_data(cfg, info)
    train_loader = _loader(cfg, info, dataset_dir, "train")
    val_loader = _loader(cfg, info, dataset_dir, "val")
    if train_loader.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's vocabulary "
            f"({train_loader.vocab_size}, data.tokenizer); raise model.vocab_size"
        )

    model, raw_model = build_model(cfg.model, cfg.parallel, info, cfg.run.seed)
    optimizer = build_optimizer(model, cfg.optim, info.device)
    schedule = LRSchedule(optimizer, cfg.optim, t.max_steps)
    counters = Counters(
        config_yaml=config_yaml,
        loss_spikes=SpikeCounter(t.spike_factor, t.spike_window),
        grad_spikes=SpikeCounter(t.spike_factor, t.spike_window),
    )
    state = TrainState(
        model, optimizer, schedule, train_loader, counters, cfg.data.allow_fingerprint_mismatch
    )
    checkpointer = Checkpointer(cfg.checkpoint, run_dir / "checkpoints", info)

    resume = rank0_decides(lambda: choose_resume(cfg), info)
    if resume is not None:
        checkpointer.load(state, resume)
        counters.config_yaml = config_yaml  # later checkpoints carry the config they were written under
    if not counters.wandb_id:
        counters.wandb_id = from_rank0(secrets.token_hex(4), info)

    grad_accum = grad_accum_steps(cfg, info.world_size)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config_yaml)
        n_params = raw_model.num_params()
        print(
            f"run {cfg.run.name}: {n_params / 1e6:.2f}M params ({cfg.model.attention}), {info.world_size} x "
            f"{info.device.type} [{cfg.parallel.mode}], {t.global_batch_tokens} tokens/step = {grad_accum} "
            f"micro-steps x {t.micro_batch} x {t.seq_len} x {info.world_size} ranks; run dir {run_dir}"
            + (f"; resumed from {resume} at step {counters.step}" if resume else ""),
            flush=True,
        )
    if info.is_main and counters.step >= t.max_steps:
        print(
            f"already at trainer.max_steps={t.max_steps}: nothing to train (raise trainer.max_steps, or "
            "start over with checkpoint.resume=none or another run.name); evaluating and exporting only",
            flush=True,
        )
    logger = _build_logger(cfg, info, run_dir, counters, counters.step)
    trainer = Trainer(
        LoopParts(
            cfg,
            info,
            model,
            raw_model,
            optimizer,
            schedule,
            train_loader,
            val_loader,
            counters,
            state,
            checkpointer,
            logger,
            grad_accum,
            config_yaml,
        )
    )
    try:
        final = trainer.run()
    except TrainingDiverged as err:
        if info.is_main:
            logger.log({"step": counters.step + 1, "event": "diverged", "message": str(err)})
        logger.abort()
        raise
    except BaseException:
        logger.abort()
        raise
    finally:
        # Stop the loaders' prefetch threads before the process group and interpreter go away.
        train_loader.close()
        val_loader.close()
    if "stopped_by" in final:
        logger.abort(exit_code=0)
        return final
    export_path = (
        export_model(model, cfg.model, run_dir, info.is_main) if cfg.checkpoint.export_safetensors else None
    )
    logger.close(final)
    if info.is_main:
        latest = complete_checkpoints(checkpointer.root)
        wandb_dirs = sorted((run_dir / "wandb").glob("*run-*")) if cfg.wandb.mode != "disabled" else []
        print(f"run dir:    {run_dir.resolve()}")
        print(f"checkpoint: {latest[-1].resolve() if latest else '-'}")
        print(f"metrics:    {(run_dir / 'metrics.jsonl').resolve()}")
        print(f"wandb:      {wandb_dirs[-1].resolve() if wandb_dirs else '-'} (mode {cfg.wandb.mode})")
        if export_path is not None:
            print(f"weights:    {export_path.resolve()} + model_config.json")
    return final
