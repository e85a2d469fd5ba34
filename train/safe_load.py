"""Reading a DCP checkpoint without running code from it.

DCP unpickles its `.metadata` file with plain `pickle.load` and the non-tensor items of a state dict
(optimizer hyper-parameters, loader position, counters) with `torch.load(weights_only=False)`: a crafted
checkpoint could run any command on load. Here `.metadata` goes through an unpickler that builds only DCP's
own metadata classes, and non-tensor items through `torch.load(weights_only=True)` (tensors, numbers,
strings, lists, dicts).
Tensor payloads already load with weights_only=True in DCP.
"""

from __future__ import annotations

import enum
import io
import pickle
from pathlib import Path, PosixPath, PurePosixPath
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem

METADATA_FILE = ".metadata"

# (module, name) pairs that DCP's metadata pickle references in torch 2.11-2.13: its dataclasses, the storage
# info of the filesystem writer, torch.Size, dtypes and layouts, and the checkpoint id (a path).
_ALLOWED: dict[str, set[str]] = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "Path"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset", "slice"},
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file asked to build something that is not checkpoint metadata."""


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if name in _ALLOWED.get(module, ()):
            if module == "pathlib":  # a path from another OS is only a label here
                return PosixPath if name != "PurePosixPath" else PurePosixPath
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"{self.path} asks to load {module}.{name}, which is not DCP checkpoint metadata; refusing to "
            "unpickle it (a crafted checkpoint could run code this way)"
        )


def read_metadata_safely(path: Path) -> Metadata:
    """`path` (a .metadata file) unpickled with only DCP's metadata classes allowed."""
    with path.open("rb") as f:
        metadata = _MetadataUnpickler(f, path).load()
    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpointError(f"{path} holds a {type(metadata).__name__}, not DCP Metadata")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """FileSystemReader whose metadata read builds DCP's metadata classes and nothing else."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        name = METADATA_FILE if rank is None else f"__{rank}{METADATA_FILE}"
        metadata = read_metadata_safely(Path(self.path) / name)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def config_enums() -> list[type]:
    """The config's choice enums a state dict may hold (StrEnums of train and model): checkpoints saved while
    one did (LRSchedule's schedule name) load; rebuilding one only looks a value up in its class. launch's
    sections never enter a checkpoint (and train does not look up to launch)."""
    import model.config
    import train.config

    modules = (train.config, model.config)
    return [
        obj
        for module in modules
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, enum.Enum) and obj.__module__ == module.__name__
    ]


class SafeLoadPlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner that reads non-tensor items with torch.load(weights_only=True)."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            with torch.serialization.safe_globals(config_enums()):
                obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(
                f"item {read_item.dest_index.fqn!r} is not plain data (numbers, strings, lists, dicts, "
                f"tensors); refusing to unpickle it: {str(err).splitlines()[0]}"
            ) from err
        # The parent's body, minus its torch.load(weights_only=False).
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj
