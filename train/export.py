"""Export weights to one safetensors file plus model_config.json, loadable by `Transformer` on one CPU, and
the tokenizer the run trained with (`tokenizer.tiktoken` + `tokenizer.json`, data/tokenizer.py's format, also
for a named encoding), so the directory alone turns text into tokens and back (`python -m infer.sample`).

`python -m train.export <checkpoint dir> [<out dir>]` exports a DCP checkpoint (default out dir: the run dir
above `checkpoints/`) after checking its checksums (--no-verify skips that, e.g. for a checkpoint saved
before checksums existed); nothing in the checkpoint is unpickled but DCP metadata and plain data. Exit codes:
the project's contract (README): 0 exported, 4 the checkpoint is refused (the message names the file).
Training calls `export_model` at the end with the live (possibly sharded) model.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

import errors
from data.config import TokenizerConfig
from data.credentials import refuse_in_args
from data.shards import DatasetError
from model import ModelConfig, Transformer
from train.checkpoint import CheckpointError, load_safely, resolve_resume
from train.checksums import ChecksumError, verify_checksums, write_checksums

WEIGHTS = "model.safetensors"
CONFIG = "model_config.json"
TOKENIZER = "tokenizer"
"""Stem of the exported tokenizer: tokenizer.tiktoken + tokenizer.json (read by data.tokenizer.load_bpe)."""
EXPORT_CHECKSUMS = "export_checksums.json"
"""sha256 of the export's files; an export dir is often a run dir, so it lists the export's files only."""
EXPORT_FILES = (WEIGHTS, CONFIG, f"{TOKENIZER}.tiktoken", f"{TOKENIZER}.json", EXPORT_CHECKSUMS)
"""Everything an export writes; run.overwrite=true moves all of them aside together."""


def seal_export(out_dir: Path) -> None:
    """Writes the export's checksum listing over the export files now in out_dir (once all are written)."""
    names = [name for name in EXPORT_FILES if name != EXPORT_CHECKSUMS and (out_dir / name).is_file()]
    write_checksums(out_dir, names, EXPORT_CHECKSUMS)


def verify_export(out_dir: Path) -> None:
    """CheckpointError naming the first export file that is altered, missing, or not in the listing."""
    try:
        verify_checksums(out_dir, EXPORT_CHECKSUMS, set(EXPORT_FILES), escape="--no-verify")
    except ChecksumError as err:
        raise CheckpointError(str(err)) from err


def save_tokenizer(cfg: TokenizerConfig, out_dir: Path) -> Path:
    """Writes the run's tokenizer (a trained BPE or a named encoding) into out_dir as a .tiktoken file."""
    from data.tokenizer import load_tokenizer, save_bpe, tokenizer_files

    save_bpe(load_tokenizer(cfg), out_dir / TOKENIZER, {"trained_as": cfg.name})
    return tokenizer_files(out_dir / TOKENIZER)[0]


def save_weights(state: dict[str, torch.Tensor], cfg: ModelConfig, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors, seen = {}, set()
    for name, tensor in state.items():
        tensor = tensor.detach().contiguous()
        if tensor.data_ptr() in seen:  # tied weights: safetensors refuses shared storage
            tensor = tensor.clone()
        seen.add(tensor.data_ptr())
        tensors[name] = tensor
    path = out_dir / WEIGHTS
    save_file(tensors, str(path), metadata={"format": "pt"})
    (out_dir / CONFIG).write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    return path


def export_model(
    model: nn.Module,
    cfg: ModelConfig,
    out_dir: Path,
    is_main: bool,
    tokenizer: TokenizerConfig | None = None,
) -> Path:
    """Gathers full weights onto rank 0's CPU (a collective: every rank calls it) and writes them there,
    with the tokenizer when given."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    path = out_dir / WEIGHTS
    if is_main:
        save_weights(state, cfg, out_dir)
        if tokenizer is not None:
            try:
                save_tokenizer(tokenizer, out_dir)
            except DatasetError as err:  # the weights are written; a missing tokenizer must not fail the run
                print(f"warning: the export has no tokenizer: {err}", file=sys.stderr, flush=True)
        seal_export(out_dir)
    return path


def load_exported(out_dir: str | Path, verify: bool = True) -> Transformer:
    """The inverse of export: a plain CPU Transformer with the exported weights, checked against the export's
    checksum listing first (verify=False: an export written before exports carried one)."""
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    if verify:
        verify_export(out_dir)
    cfg = ModelConfig(**json.loads((out_dir / CONFIG).read_text()))
    model = Transformer(cfg)
    model.load_state_dict(load_file(str(out_dir / WEIGHTS)))
    return model


def export_checkpoint(checkpoint: Path, out_dir: Path, verify: bool = True) -> Path:
    """Reads the model part of a DCP checkpoint (any world size wrote it) into one CPU process."""
    import torch.distributed as dist

    resolve_resume(str(checkpoint), checkpoint.parent, verify=verify)  # complete, and checksums match
    resolved = OmegaConf.load(checkpoint / "config.yaml")
    cfg = ModelConfig(**OmegaConf.to_container(resolved.model, resolve=True))
    model = Transformer(cfg)
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    state = model.state_dict()
    load_safely({"app": {"model": state}}, checkpoint)
    path = save_weights(state, cfg, out_dir)
    # The resolved config names the tokenizer files (a relative data dir resolves against the cwd).
    tokenizer = OmegaConf.to_container(resolved.data.tokenizer, resolve=True)
    save_tokenizer(TokenizerConfig(**tokenizer), out_dir)
    seal_export(out_dir)
    return path


@errors.reports_errors
def main(argv: list[str] | None = None) -> None:
    refuse_in_args(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m train.export", description=__doc__)
    parser.add_argument(
        "checkpoint", type=Path, help="a checkpoint dir, e.g. runs/x/checkpoints/step_00000300"
    )
    parser.add_argument("out_dir", type=Path, nargs="?", help="default: the run dir of the checkpoint")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the checksum check (checkpoints without checksums.json)",
    )
    args = parser.parse_args(argv)
    out_dir = args.out_dir or args.checkpoint.resolve().parent.parent
    path = export_checkpoint(args.checkpoint, out_dir, verify=not args.no_verify)
    print(f"exported {path}, {out_dir / CONFIG} and the tokenizer ({out_dir / TOKENIZER}.tiktoken)")


if __name__ == "__main__":
    main()
