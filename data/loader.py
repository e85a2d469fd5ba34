"""TokenLoader: every rank's slice of one deterministic global stream of fixed-length windows.

The global stream is epoch 0's seeded permutation of all windows, then epoch 1's, and so on. Global
micro-step k takes stream positions [k * G, (k + 1) * G) with G = dp_size * micro_batch, and data-parallel
rank r gets the r-th block of micro_batch of them. The only state is the global cursor (windows the whole
job has consumed), so a job resumed on another world size at an optimizer-step boundary, with the same
global batch, reads exactly the windows the uninterrupted job would have read next.

`StreamLoader` holds that contract (a `LoaderSpec`, the cursor, prefetch, state); a subclass says which
windows sit at stream positions: `TokenLoader` one dataset's epochs (`WindowStream`), data/mixture.py several
datasets'.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from data.cache import ShardCache
from data.config import CacheConfig
from data.dataset import TokenDataset
from data.objectstore import is_url
from data.remote import RemoteDataset, cache_from_config
from data.shards import DatasetError
from data.spec import LoaderSpec

Batch = tuple[torch.Tensor, torch.Tensor]


def open_dataset(
    dataset_dir: str | Path, split: str, seq_len: int, cache: ShardCache | None = None, verify: bool = True
) -> TokenDataset | RemoteDataset:
    """A local directory as a TokenDataset (`verify`: its shards' sha256 before first use); a URL as a
    RemoteDataset reading through `cache` (default: CacheConfig's defaults), which checks every shard."""
    if not is_url(dataset_dir):
        return TokenDataset(dataset_dir, split, seq_len, verify=verify)
    if cache is None:
        cache = cache_from_config(CacheConfig(dir=os.environ.get("DIFFV2_CACHE", ".cache/shards")))
    return RemoteDataset(str(dataset_dir), split, seq_len, cache)


class _Prefetcher:
    """A daemon thread that builds batches for cursors start, start + step, ... ahead of the consumer."""

    def __init__(self, make_batch: Callable[[int], Batch], start: int, step: int, depth: int) -> None:
        self._make_batch = make_batch
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(start, step), daemon=True, name="TokenLoader")
        self._thread.start()

    def _run(self, cursor: int, step: int) -> None:
        while not self._stop.is_set():
            try:
                item: object = (cursor, self._make_batch(cursor))
            except BaseException as err:  # handed to the consumer, which re-raises it in its own thread
                item = err
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return
            cursor += step

    def get(self) -> tuple[int, Batch]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        try:  # free a slot so a producer blocked in put() wakes now instead of at its timeout
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._thread.join()


class WindowStream:
    """One dataset's windows as an endless stream: epoch e is a seeded permutation of all its windows."""

    def __init__(self, data: TokenDataset | RemoteDataset, seed_key: list[int], shuffle: bool) -> None:
        """seed_key: the epoch permutation is drawn from default_rng(seed_key + [epoch])."""
        self.data = data
        self.seed_key = seed_key
        self.shuffle = shuffle
        self.num_sequences: int = data.num_sequences
        self._perms: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def _permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._perms:
                if len(self._perms) >= 2:  # a batch spans at most two epochs
                    self._perms.pop(min(self._perms))
                rng = np.random.default_rng([*self.seed_key, epoch])
                self._perms[epoch] = rng.permutation(self.num_sequences)
            return self._perms[epoch]

    def window_ids(self, positions: np.ndarray) -> np.ndarray:
        """Window indices at these positions of the stream (any order, any epochs)."""
        epochs, within = np.divmod(positions, self.num_sequences)
        if not self.shuffle:
            return within
        ids = np.empty(len(positions), dtype=np.int64)
        for epoch in np.unique(epochs).tolist():
            mask = epochs == epoch
            ids[mask] = self._permutation(epoch)[within[mask]]
        return ids


class StreamLoader:
    """Ranks, the global cursor, iteration, prefetch and the resumable state; see the module docstring."""

    def __init__(self, spec: LoaderSpec) -> None:
        self.spec = spec
        self.split = spec.split
        self.seq_len = spec.seq_len
        self.micro_batch = spec.micro_batch
        self.seed = spec.seed
        self.shuffle = spec.shuffle
        self.prefetch = spec.prefetch
        self.pin_memory = spec.pin_memory and torch.cuda.is_available()
        self.global_batch = spec.dp_size * spec.micro_batch
        """Windows one global micro-step consumes across all data-parallel ranks."""
        self._cursor = 0
        self._prefetcher: _Prefetcher | None = None

    @property
    def cursor(self) -> int:
        """Windows the whole job has consumed (all ranks, all epochs)."""
        return self._cursor

    def windows_at(self, start: int, count: int) -> np.ndarray:
        """[count, seq_len + 1] int64 windows at global stream positions [start, start + count)."""
        raise NotImplementedError

    def metrics(self) -> dict[str, float]:
        """Per-source figures for the training log (a mixture's tokens and epochs per source)."""
        return {}

    def batch_at(self, cursor: int) -> Batch:
        """This rank's batch of the global micro-step that starts at global position `cursor`."""
        windows = torch.from_numpy(
            self.windows_at(cursor + self.spec.dp_rank * self.micro_batch, self.micro_batch)
        )
        inputs, targets = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
        if self.pin_memory:
            inputs, targets = inputs.pin_memory(), targets.pin_memory()
        return inputs, targets

    def __iter__(self) -> StreamLoader:
        return self

    def __next__(self) -> Batch:
        if self.prefetch == 0:
            batch = self.batch_at(self._cursor)
        else:
            if self._prefetcher is None:
                self._prefetcher = _Prefetcher(self.batch_at, self._cursor, self.global_batch, self.prefetch)
            cursor, batch = self._prefetcher.get()
            assert cursor == self._cursor, (cursor, self._cursor)
        self._cursor += self.global_batch
        return batch

    def _stop_prefetch(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None

    def reset(self) -> None:
        """Back to the start of the stream (for the validation split: the same batches every evaluation)."""
        self._stop_prefetch()
        self._cursor = 0

    def close(self) -> None:
        """Stops the background thread (it is a daemon, so forgetting this never blocks exit)."""
        self._stop_prefetch()

    def _check_state(self, state: dict[str, object], allow_fingerprint_mismatch: bool) -> None:
        """Raises when `state` belongs to another stream; subclasses add what defines theirs."""
        for key in ("seed", "seq_len", "split", "shuffle"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"loader state has {key}={state[key]!r} but this loader has "
                    f"{key}={getattr(self, key)!r}; the global stream would differ"
                )

    def load_state_dict(self, state: dict[str, object], allow_fingerprint_mismatch: bool = False) -> None:
        """Continues the global stream at `state`'s cursor; batches already prefetched are dropped."""
        self._check_state(state, allow_fingerprint_mismatch)
        cursor = int(state["cursor"])
        if cursor < 0:
            raise ValueError(f"loader state cursor={cursor}; expected >= 0")
        self._stop_prefetch()
        self._cursor = cursor


class TokenLoader(StreamLoader):
    def __init__(
        self, dataset_dir: str | Path, spec: LoaderSpec, cache: ShardCache | None = None, lookahead: int = 4
    ) -> None:
        """Iterating yields (inputs, targets), int64 [micro_batch, seq_len], endlessly (the caller bounds it).

        dataset_dir: a prepared dataset directory, or its fsspec URL (s3://..., read through `cache`, which
        checks every download and every cached file; spec.verify applies to local shards).
        lookahead: for a URL, micro-batches ahead whose shards are downloaded in the background.
        """
        super().__init__(spec)
        self._data = open_dataset(dataset_dir, spec.split, spec.seq_len, cache, spec.verify)
        self.lookahead = lookahead
        self.fingerprint: str = self._data.fingerprint
        self.vocab_size: int = self._data.vocab_size
        self.eot_token: int = self._data.eot_token
        self.num_sequences: int = self._data.num_sequences
        self._stream = WindowStream(self._data, [spec.seed], spec.shuffle)

    @property
    def epoch(self) -> int:
        return self._cursor // self.num_sequences

    def window_ids(self, start: int, count: int) -> np.ndarray:
        """Window indices at global stream positions [start, start + count)."""
        return self._stream.window_ids(np.arange(start, start + count, dtype=np.int64))

    def windows_at(self, start: int, count: int) -> np.ndarray:
        if isinstance(self._data, RemoteDataset) and self.lookahead:  # this rank's next micro-batches
            step = self.global_batch
            ahead = [self.window_ids(start + k * step, count) for k in range(1, self.lookahead + 1)]
            self._data.prefetch(np.concatenate(ahead))
        return self._data.windows(self.window_ids(start, count))

    def state_dict(self) -> dict[str, object]:
        """The global position: equal on every rank, valid for any world size with the same global batch."""
        return {
            "cursor": self._cursor,
            "epoch": self.epoch,
            "seed": self.seed,
            "fingerprint": self.fingerprint,
            "seq_len": self.seq_len,
            "split": self.split,
            "shuffle": self.shuffle,
        }

    def close(self) -> None:
        """Stops the background threads (batches; for a URL, shard downloads)."""
        super().close()
        if isinstance(self._data, RemoteDataset):
            self._data.close()

    def _check_state(self, state: dict[str, object], allow_fingerprint_mismatch: bool) -> None:
        if state["fingerprint"] != self.fingerprint and not allow_fingerprint_mismatch:
            raise DatasetError(
                f"{self._data.dir}: the checkpoint's loader state is for dataset fingerprint "
                f"{str(state['fingerprint'])[:16]}... but this dataset is {self.fingerprint[:16]}...; "
                "resuming would not continue the same data stream. "
                "Set data.allow_fingerprint_mismatch=true to resume anyway"
            )
        super()._check_state(state, allow_fingerprint_mismatch)
