"""One training job on every rank: process group, data, model, optimizer, resume, sinks, loop, export."""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

import errors
from conf import RunConfig
from data.build import build_loader, ensure_data
from data.loader import StreamLoader
from data.spec import LoaderSpec
from errors import ConfigError
from model.config import ModelConfig
from train.checkpoint import Checkpointer, complete_checkpoints
from train.config import grad_accum_steps
from train.downstream import DownstreamEval
from train.export import export_model
from train.loop import LoopParts, RunResult, Trainer, TrainingDiverged
from train.metrics import ConsoleSink, JsonlSink, MetricsLogger, Sink, WandbSink
from train.optim import LRSchedule, build_optimizer
from train.parallel import DistInfo, build_model, from_rank0, init_distributed, shutdown_distributed
from train.rundir import choose_resume, hold_run_dir, rank0_decides
from train.spikes import spike_counters
from train.state import Counters, TrainState


class DatasetUnavailable(errors.DatasetUnavailable, RuntimeError):
    """Rank 0 could not find or prepare the dataset."""


def _agree_run_dir(run_dir: str, info: DistInfo) -> None:
    """All ranks must write to one directory; a per-rank value (e.g. ${now:}) would split the run."""
    dirs: list[str | None] = [None] * info.world_size
    dist.all_gather_object(dirs, run_dir)
    if len(set(dirs)) > 1:
        raise ConfigError(
            f"run.dir differs between ranks: {sorted(set(dirs))}; it must not depend on time or rank"
        )


def _prepare_data(cfg: RunConfig, info: DistInfo) -> None:
    """Rank 0 prepares the tokenizer and shards when missing (a mixture's sources: checks them); the others
    wait, then share its verdict."""
    error = None
    if info.is_main:
        try:
            ensure_data(cfg.data)
        except Exception as err:  # every rank must learn of it, or the others wait forever
            error = f"{type(err).__name__}: {err}"
    error = from_rank0(error, info)
    if error is not None:
        where = "data.mixture" if cfg.data.mixture else f"data.dir={cfg.data.dir}"
        raise DatasetUnavailable(f"{where}: {error}")


def _loader(cfg: RunConfig, info: DistInfo, split: str) -> StreamLoader:
    """This rank's slice of the global stream: shuffled for train, in order (reset per eval) for val."""
    t = cfg.trainer
    spec = LoaderSpec(
        split,
        t.seq_len,
        t.micro_batch,
        cfg.run.seed,
        dp_rank=info.dp_rank,  # the ranks of one TP group read the same batches
        dp_size=info.dp_size,
        shuffle=split == "train",
        prefetch=cfg.data.prefetch,
        pin_memory=info.device.type == "cuda",
        verify=cfg.data.verify_shards,
    )
    return build_loader(cfg.data, spec)


def _build_logger(
    cfg: RunConfig, info: DistInfo, run_dir: Path, wandb_id: str, start_step: int
) -> MetricsLogger:
    if not info.is_main:
        return MetricsLogger([])
    sinks: list[Sink] = [
        ConsoleSink(cfg.trainer.max_steps, start_step),
        JsonlSink(run_dir / "metrics.jsonl", start_step),
    ]
    if cfg.wandb.mode != "disabled":
        config = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
        sinks.append(WandbSink(cfg.wandb, cfg.run.name, run_dir, wandb_id, config))
    return MetricsLogger(sinks)


def run_training(cfg: RunConfig, config_yaml: str) -> RunResult:
    """Runs the whole job on this rank; returns how it ended (rank 0's metrics)."""
    info = init_distributed(cfg.parallel, cfg.trainer.device)
    try:
        with hold_run_dir(cfg.run, info):
            return _run(cfg, config_yaml, info)
    finally:
        shutdown_distributed()


def _model_config_from_data(model: ModelConfig, eot_token: int) -> ModelConfig:
    """The model section with what the data decides filled in (the end-of-text token that ends documents,
    for model.doc_mask), as a new ModelConfig: the validated run config is never edited. The model built
    from it validates it again."""
    if not model.doc_mask:
        return model
    if model.eot_token >= 0 and model.eot_token != eot_token:
        raise ConfigError(
            f"model.eot_token={model.eot_token} but the dataset's tokenizer ends documents with "
            f"{eot_token}; leave model.eot_token=-1 to take it from the dataset"
        )
    return dataclasses.replace(model, eot_token=eot_token)


def _downstream_eval(cfg: RunConfig, eot_token: int) -> DownstreamEval | None:
    """trainer.downstream_tasks scored every trainer.downstream_interval steps; None when either is unset."""
    t = cfg.trainer
    if not (t.downstream_interval and t.downstream_tasks):
        return None
    from data.tokenizer import load_tokenizer

    enc = load_tokenizer(cfg.data.tokenizer)
    return DownstreamEval(list(t.downstream_tasks), enc.encode_ordinary, eot_token)


def _build_parts(
    cfg: RunConfig, config_yaml: str, info: DistInfo, run_dir: Path
) -> tuple[LoopParts, Path | None]:
    """Data, model, optimizer and the saved state (resumed when a checkpoint is found); also the checkpoint
    resumed from."""
    t = cfg.trainer
    _prepare_data(cfg, info)
    train_loader = _loader(cfg, info, "train")
    val_loader = _loader(cfg, info, "val")
    if train_loader.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's vocabulary "
            f"({train_loader.vocab_size}, data.tokenizer); raise model.vocab_size"
        )
    model_cfg = _model_config_from_data(cfg.model, train_loader.eot_token)
    model, raw_model = build_model(model_cfg, cfg.parallel, info, cfg.run.seed)
    optimizer = build_optimizer(model, cfg.optim, info.device)
    schedule = LRSchedule(optimizer, cfg.optim, t.max_steps)
    loss_spikes, grad_spikes = spike_counters(t)
    state = TrainState(
        model,
        optimizer,
        schedule,
        train_loader,
        Counters(loss_spikes=loss_spikes, grad_spikes=grad_spikes),
        allow_fingerprint_mismatch=cfg.data.allow_fingerprint_mismatch,
    )
    checkpointer = Checkpointer(cfg.checkpoint, run_dir / "checkpoints", info, config_yaml)
    resume = rank0_decides(lambda: choose_resume(cfg, config_yaml), info)
    if resume is not None:
        checkpointer.load(state, resume)
    if not state.wandb_id:
        state.wandb_id = from_rank0(secrets.token_hex(4), info)
    parts = LoopParts(
        cfg=cfg,
        info=info,
        state=state,
        raw_model=raw_model,
        val_loader=val_loader,
        checkpointer=checkpointer,
        logger=_build_logger(cfg, info, run_dir, state.wandb_id, state.counters.step),
        grad_accum=grad_accum_steps(cfg.trainer, info.dp_size),
        downstream=_downstream_eval(cfg, train_loader.eot_token),
    )
    return parts, resume


def _announce(parts: LoopParts, run_dir: Path, resume: Path | None) -> None:
    """Rank 0: the run's config next to its checkpoints, and one line saying what is about to run."""
    cfg, info, t, step = parts.cfg, parts.info, parts.cfg.trainer, parts.state.counters.step
    (run_dir / "config.yaml").write_text(parts.checkpointer.config_yaml)
    # What the model is, recorded where run analysis reads (analysis/ never builds a model to learn it).
    params, flops = parts.raw_model.num_params(), parts.raw_model.flops_per_token(t.seq_len)
    parts.logger.log({"step": step, "event": "start", "params": params, "flops_per_token": flops})
    print(
        f"run {cfg.run.name}: {params / 1e6:.2f}M params ({cfg.model.attention}), "
        f"{info.world_size} x {info.device.type} [{info.dims.describe()}], "
        f"{t.global_batch_tokens} tokens/step = {parts.grad_accum} micro-steps x {t.micro_batch} x "
        f"{t.seq_len} x {info.dp_size} data-parallel ranks; "
        f"run dir {run_dir}" + (f"; resumed from {resume} at step {step}" if resume else ""),
        flush=True,
    )
    if step >= t.max_steps:
        print(
            f"already at trainer.max_steps={t.max_steps}: nothing to train (raise trainer.max_steps, or "
            "start over with checkpoint.resume=none or another run.name); evaluating and exporting only",
            flush=True,
        )


def _print_outputs(cfg: RunConfig, run_dir: Path, checkpoints: Path, export_path: Path | None) -> None:
    latest = complete_checkpoints(checkpoints)
    wandb_dirs = sorted((run_dir / "wandb").glob("*run-*")) if cfg.wandb.mode != "disabled" else []
    print(f"run dir:    {run_dir.resolve()}")
    print(f"checkpoint: {latest[-1].resolve() if latest else '-'}")
    print(f"metrics:    {(run_dir / 'metrics.jsonl').resolve()}")
    print(f"wandb:      {wandb_dirs[-1].resolve() if wandb_dirs else '-'} (mode {cfg.wandb.mode})")
    if export_path is not None:
        print(f"weights:    {export_path.resolve()} + model_config.json + tokenizer.tiktoken")


def _run(cfg: RunConfig, config_yaml: str, info: DistInfo) -> RunResult:
    _agree_run_dir(cfg.run.dir, info)
    run_dir = Path(cfg.run.dir)
    torch.manual_seed(cfg.run.seed)
    if info.is_main:  # Hydra makes it for `python -m train`; a caller in Python may not have
        run_dir.mkdir(parents=True, exist_ok=True)
    parts, resume = _build_parts(cfg, config_yaml, info, run_dir)
    if info.is_main:
        _announce(parts, run_dir, resume)
    logger = parts.logger
    try:
        result = Trainer(parts).run()
    except TrainingDiverged as err:
        logger.log({"step": parts.state.counters.step + 1, "event": "diverged", "message": str(err)})
        logger.abort()
        raise
    except BaseException:
        logger.abort()
        raise
    finally:
        # Stop the loaders' prefetch threads before the process group and interpreter go away.
        parts.state.loader.close()
        parts.val_loader.close()
    if result.stopped:
        logger.abort(exit_code=0)
        return result
    export_path = None
    if cfg.checkpoint.export_safetensors:
        export_path = export_model(
            parts.state.model, parts.raw_model.cfg, run_dir, info.is_main, tokenizer=cfg.data.tokenizer
        )
    logger.close(result.summary())
    if info.is_main:
        _print_outputs(cfg, run_dir, parts.checkpointer.root, export_path)
    return result
