"""A model and its tokenizer from a run dir, a DCP checkpoint dir or an export dir, on one device.

- export dir (`python -m train.export`, or a finished run dir): model.safetensors, model_config.json and the
  tokenizer files (tokenizer.tiktoken + tokenizer.json);
- checkpoint dir (`runs/x/checkpoints/step_XXXXXXXX`): exported to a temporary dir first, through
  train/export.py, so there is one reader of DCP checkpoints;
- run dir without exported weights (stopped early): its latest complete checkpoint.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tiktoken
import torch
import torch.distributed as dist

from data.credentials import refuse_in_args
from data.tokenizer import load_bpe, tokenizer_files
from errors import ConfigError
from model import ModelConfig, Transformer
from train.checkpoint import CheckpointError, complete_checkpoints
from train.export import CONFIG, TOKENIZER, WEIGHTS, export_checkpoint, load_exported


@dataclass
class Loaded:
    """A model in eval mode on `device`, its tokenizer, and the export dir they were read from."""

    model: Transformer
    tokenizer: tiktoken.Encoding
    source: Path

    @property
    def cfg(self) -> ModelConfig:
        return self.model.cfg

    @property
    def device(self) -> torch.device:
        return self.model.tok_embeddings.weight.device


def is_export_dir(path: Path) -> bool:
    return (path / WEIGHTS).is_file() and (path / CONFIG).is_file()


def is_checkpoint_dir(path: Path) -> bool:
    return (path / ".metadata").is_file() and (path / "config.yaml").is_file()


def load_tokenizer_from(export_dir: Path) -> tiktoken.Encoding:
    """The tokenizer an export carries; a clear error for an export written before exports carried one."""
    ranks, _ = tokenizer_files(export_dir / TOKENIZER)
    if not ranks.is_file():
        raise CheckpointError(
            f"{ranks} is missing: {export_dir} holds weights but no tokenizer (an older export?). "
            "Re-export a checkpoint with `python -m train.export <checkpoint dir> <out dir>`"
        )
    return load_bpe(export_dir / TOKENIZER)


def _load_export(export_dir: Path, device: torch.device, dtype: torch.dtype, verify: bool) -> Loaded:
    model = load_exported(export_dir, verify).to(device=device, dtype=dtype).eval()
    return Loaded(model, load_tokenizer_from(export_dir), export_dir)


def load(
    source: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    verify: bool = True,
) -> Loaded:
    """The model and tokenizer of `source` (see the module docstring for what it may be); `verify=False`
    reads a checkpoint or export without its checksum listing (written before they carried one)."""
    path = Path(source)
    device = torch.device(device)
    if is_export_dir(path):
        return _load_export(path, device, dtype, verify)
    if not is_checkpoint_dir(path):
        done = complete_checkpoints(path / "checkpoints")
        if not done:
            raise CheckpointError(
                f"{path} is neither an export dir ({WEIGHTS} + {CONFIG}), a checkpoint dir (.metadata + "
                "config.yaml) nor a run dir with a complete checkpoint under checkpoints/"
            )
        path = done[-1]
    had_group = dist.is_initialized()  # export_checkpoint starts a 1-rank gloo group for DCP when none runs
    try:
        with tempfile.TemporaryDirectory(prefix="diffv2-export-") as tmp:
            export_checkpoint(path, Path(tmp), verify=verify)
            loaded = _load_export(Path(tmp), device, dtype, verify)
    finally:
        if not had_group and dist.is_initialized():
            dist.destroy_process_group()
    loaded.source = path
    return loaded


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """SOURCE, --device and --no-verify: what every infer command loads its model with."""
    parser.add_argument("source", type=Path, help="run dir, checkpoint dir or export dir")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="load a checkpoint or export without its checksum listing (an older one)",
    )


def device_from_arg(text: str) -> torch.device:
    """The device --device names, or a ConfigError when torch does not know it or this machine lacks it."""
    try:
        device = torch.device(text)
        torch.empty(0, device=device)  # a CUDA device on a machine without one fails here, not mid-load
    except (RuntimeError, AssertionError) as err:  # torch says AssertionError for "not compiled with CUDA"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            f"--device {text!r} cannot be used here ({reason}): pass cpu, cuda or cuda:N"
        ) from None
    return device


def read_input_text(path: Path, flag: str) -> str:
    """The UTF-8 text of an input file the user named with `flag`; a ConfigError naming the path and the
    cause when it is missing, a directory, unreadable or not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{flag} {path}: {err.strerror or err} (pass a readable text file)") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{flag} {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def load_from_args(args: argparse.Namespace) -> Loaded:
    refuse_in_args([str(value) for value in vars(args).values()])
    return load(args.source, device_from_arg(args.device), verify=not args.no_verify)
