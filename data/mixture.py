"""MixtureLoader: one global stream interleaving several prepared datasets by weight.

The stream is cut into blocks of BLOCK windows. Every block holds the same number of windows of each source,
c_s = BLOCK * w_s rounded by largest remainder (so the proportions are exact per block, not just on
average), in an order drawn from the seed and the block index. The k-th window a source contributes is
window k of that source's own stream: its epoch 0 permutation, then epoch 1's, ... (`WindowStream`), so a
source is read without repeats within its epoch, and a small source simply starts its next epoch when
exhausted (the `data/<name>/epochs` metric passes 1.0). Everything is a function of the global cursor, so
the loader keeps `TokenLoader`'s contract: one deterministic stream, exact resume on any world size with
the same global batch.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.blocks import BLOCK, block_counts
from data.config import MixtureSourceConfig
from data.dataset import TokenDataset, read_manifest
from data.loader import StreamLoader, WindowStream
from data.objectstore import is_url
from data.shards import DatasetError
from data.spec import LoaderSpec


@dataclass(frozen=True)
class MixtureSource:
    name: str
    """Source name: names its metrics and its errors."""
    dir: str
    """Prepared dataset directory (manifest + shards)."""
    weight: float
    """Relative share of training windows; the weights are normalised to sum to 1."""


def _name_key(name: str) -> int:
    """A stable integer per source name, so each source's epochs have their own permutations."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little")


class MixtureLoader(StreamLoader):
    def __init__(self, sources: list[MixtureSource], spec: LoaderSpec) -> None:
        """Like TokenLoader, over several datasets; they must share one tokenizer. spec.verify: each source's
        shards against its manifest's sha256 before first use."""
        super().__init__(spec)
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise DatasetError(f"data.mixture names a source twice: {names}")
        self.sources = list(sources)
        self.counts = block_counts([(s.name, s.weight) for s in self.sources])
        opened = [self._open(s, spec.split, spec.seq_len, spec.verify) for s in self.sources]
        self._datasets = [data for data, _ in opened]
        (first_tok, first_fp), first = opened[0][1], self.sources[0]
        for s, (_, (tok, fp)) in zip(self.sources[1:], opened[1:], strict=True):
            if fp != first_fp:
                raise DatasetError(
                    f"data.mixture.{s.name} ({s.dir}) was tokenized with {tok!r} (fingerprint {fp[:16]}...) "
                    f"but data.mixture.{first.name} ({first.dir}) with {first_tok!r} ({first_fp[:16]}...); "
                    "a mixture needs one tokenizer: prepare every source with the same data.tokenizer "
                    "settings (a trained BPE: the same data.tokenizer.path)"
                )
        first_data = self._datasets[0]
        self.vocab_size: int = first_data.vocab_size
        self.eot_token: int = first_data.eot_token
        self.fingerprint: str = hashlib.sha256(
            json.dumps(self._describe(), sort_keys=True).encode()
        ).hexdigest()
        """Of the whole mixture: every source's dataset fingerprint, name and block count."""
        self._streams = [
            WindowStream(data, [spec.seed, _name_key(s.name)], spec.shuffle)
            for s, data in zip(self.sources, self._datasets, strict=True)
        ]
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._blocks_lock = threading.Lock()

    @staticmethod
    def _open(
        source: MixtureSource, split: str, seq_len: int, verify: bool = True
    ) -> tuple[TokenDataset, tuple[str, str]]:
        """The source's split and its tokenizer (name, fingerprint); errors name the source."""
        field = f"data.mixture.{source.name}"
        if is_url(source.dir):
            raise DatasetError(
                f"{field}.dir={source.dir!r}: mixture sources are read from local directories; a URL works "
                "as data.dir of a single dataset (copy the source locally, or prepare it to a local dir)"
            )
        if not Path(source.dir).is_dir():
            raise DatasetError(
                f"{field}.dir={source.dir!r} does not exist; prepare that source first "
                f"(`python -m data.prepare data.dir={source.dir} ...`) or fix the path"
            )
        try:
            tokenizer = read_manifest(Path(source.dir))["tokenizer"]
            data = TokenDataset(source.dir, split, seq_len, verify=verify)
        except DatasetError as err:
            raise DatasetError(f"{field} ({source.dir}): {err}") from err
        return data, (tokenizer["name"], tokenizer["fingerprint"])

    def _describe(self) -> list[dict[str, object]]:
        return [
            {"name": s.name, "fingerprint": d.fingerprint, "per_block": int(c)}
            for s, d, c in zip(self.sources, self._datasets, self.counts.tolist(), strict=True)
        ]

    def _block(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(source of each slot, how many earlier slots of the block hold that source), [BLOCK] each."""
        with self._blocks_lock:
            if index not in self._blocks:
                if len(self._blocks) >= 4:  # the consumer's and the prefetch thread's blocks, and the next
                    self._blocks.pop(min(self._blocks))
                labels = np.repeat(np.arange(len(self.sources)), self.counts)
                if self.shuffle:
                    labels = np.random.default_rng([self.seed, 0x6D6978, index]).permutation(labels)
                within = np.empty(BLOCK, dtype=np.int64)
                for s in range(len(self.sources)):
                    slots = labels == s
                    within[slots] = np.arange(int(slots.sum()))
                self._blocks[index] = (labels, within)
            return self._blocks[index]

    def locate(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(source index, position in that source's stream) at global positions [start, start + count)."""
        positions = np.arange(start, start + count, dtype=np.int64)
        blocks, slots = np.divmod(positions, BLOCK)
        source = np.empty(count, dtype=np.int64)
        local = np.empty(count, dtype=np.int64)
        for b in np.unique(blocks).tolist():
            mask = blocks == b
            labels, within = self._block(b)
            source[mask] = labels[slots[mask]]
            local[mask] = b * self.counts[source[mask]] + within[slots[mask]]
        return source, local

    def windows_at(self, start: int, count: int) -> np.ndarray:
        source, local = self.locate(start, count)
        out = np.empty((count, self.seq_len + 1), dtype=np.int64)
        for s in np.unique(source).tolist():
            rows = source == s
            ids = self._streams[s].window_ids(local[rows])
            out[rows] = self._datasets[s].windows(ids)
        return out

    def windows_read(self, cursor: int | None = None) -> np.ndarray:
        """Windows each source has given the whole job up to `cursor` (default: the current one)."""
        cursor = self._cursor if cursor is None else cursor
        full, rest = divmod(cursor, BLOCK)
        read = full * self.counts
        if rest:
            labels, _ = self._block(full)
            read = read + np.bincount(labels[:rest], minlength=len(self.sources))
        return read

    def metrics(self) -> dict[str, float]:
        """Per source: tokens the job has read from it, and epochs of it (above 1.0: it has cycled)."""
        read = self.windows_read()
        out: dict[str, float] = {}
        for s, n, stream in zip(self.sources, read.tolist(), self._streams, strict=True):
            out[f"data/{s.name}/tokens"] = n * self.seq_len
            out[f"data/{s.name}/epochs"] = n / stream.num_sequences
        return out

    def state_dict(self) -> dict[str, object]:
        """The global position plus what defines the mixture; valid for any world size, same global batch."""
        return {
            "cursor": self._cursor,
            "seed": self.seed,
            "fingerprint": self.fingerprint,
            "seq_len": self.seq_len,
            "split": self.split,
            "shuffle": self.shuffle,
            "mixture": json.dumps(self._describe(), sort_keys=True),
        }

    def _check_state(self, state: dict[str, object], allow_fingerprint_mismatch: bool) -> None:
        if "mixture" not in state:
            raise DatasetError(
                "the checkpoint's loader state is for one dataset, but data.mixture names "
                f"{[s.name for s in self.sources]}; resume with the data settings the run started with"
            )
        saved = json.loads(str(state["mixture"]))
        mine = self._describe()
        schedule = [(d["name"], d["per_block"]) for d in saved]
        if schedule != [(d["name"], d["per_block"]) for d in mine]:
            raise DatasetError(
                f"the checkpoint's mixture has (source, windows per {BLOCK}) {schedule} but data.mixture "
                "gives "
                f"{[(d['name'], d['per_block']) for d in mine]}; the stream would differ"
            )
        changed = [
            m["name"] for m, d in zip(mine, saved, strict=True) if m["fingerprint"] != d["fingerprint"]
        ]
        if changed and not allow_fingerprint_mismatch:
            raise DatasetError(
                f"data.mixture sources {changed} hold other data than when the checkpoint was written "
                "(dataset fingerprint differs); resuming would not continue the same data stream. "
                "Set data.allow_fingerprint_mismatch=true to resume anyway"
            )
        super()._check_state(state, allow_fingerprint_mismatch)


def mixture_sources(mixture: dict[str, MixtureSourceConfig]) -> list[MixtureSource]:
    """The configured sources in name order (a mapping's order must not change the stream)."""
    return [MixtureSource(name, m.dir, m.weight) for name, m in sorted(mixture.items())]
