"""Cuts one split's token stream into fixed-size shards and remembers where the next shard starts.

The position recorded after each shard, (next_doc, next_offset), is the first token not yet in a shard: a
rerun skips every document of this split before next_doc and the first next_offset tokens of next_doc, so
it writes exactly the shards an uninterrupted run would have written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from data.shards import DatasetError, file_sha256, write_shard


def empty_split_state() -> dict[str, object]:
    return {"shards": [], "next_doc": 0, "next_offset": 0, "documents": 0}


class SplitWriter:
    def __init__(
        self,
        out_dir: Path,
        split: str,
        state: dict,
        shard_tokens: int,
        vocab_size: int,
        tokenizer_fingerprint: str,
        on_shard: Callable[[], None],
    ) -> None:
        """`state` is this split's entry of the progress file (updated in place); `on_shard` saves it."""
        if shard_tokens <= 0:
            raise DatasetError(f"data.shard_tokens={shard_tokens}; expected a positive number of tokens")
        self.out_dir = out_dir
        self.split = split
        self.state = state
        self.shard_tokens = shard_tokens
        self.vocab_size = vocab_size
        self.fingerprint = tokenizer_fingerprint
        self.on_shard = on_shard
        self.resume_doc: int = state["next_doc"]
        self.resume_offset: int = state["next_offset"]
        self.docs_before_resume: int = state["documents"]
        self.docs_added = 0
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.tokens_added = 0

    def verify_existing(self) -> None:
        """The shards a previous run finished must still be intact before this run builds on them."""
        for entry in self.state["shards"]:
            path = self.out_dir / entry["file"]
            if not path.is_file() or file_sha256(path) != entry["sha256"]:
                raise DatasetError(
                    f"{path}: shard recorded as finished in {self.out_dir}/.prepare_progress.json is "
                    "missing or changed since; delete the dataset directory and prepare again"
                )

    def wants(self, doc: int) -> bool:
        """False for a document already fully written by an earlier run."""
        return doc >= self.resume_doc

    def add(self, doc: int, tokens: np.ndarray) -> None:
        """Appends one document's tokens (eot included), writing every shard that fills up."""
        if doc < self.resume_doc:
            return
        self.docs_added += 1
        offset = self.resume_offset if doc == self.resume_doc else 0
        while offset < len(tokens):
            take = min(len(tokens) - offset, self.shard_tokens - self.buffered)
            self.buffer.append(tokens[offset : offset + take])
            self.buffered += take
            offset += take
            if self.buffered == self.shard_tokens:
                if offset < len(tokens):
                    self._flush(doc, offset, documents=self.docs_before_resume + self.docs_added - 1)
                else:
                    self._flush(doc + 1, 0, documents=self.docs_before_resume + self.docs_added)

    def finish(self, end_doc: int) -> None:
        """Writes the last, shorter shard once the source is exhausted."""
        if self.buffered:
            self._flush(end_doc, 0, documents=self.docs_before_resume + self.docs_added)
        self.state["documents"] = self.docs_before_resume + self.docs_added

    def _flush(self, next_doc: int, next_offset: int, documents: int) -> None:
        tokens = np.concatenate(self.buffer)
        name = f"{self.split}_{len(self.state['shards']):06d}.bin"
        sha = write_shard(self.out_dir / name, tokens, self.vocab_size, self.fingerprint)
        self.state["shards"].append({"file": name, "tokens": int(tokens.size), "sha256": sha})
        self.state.update(next_doc=next_doc, next_offset=next_offset, documents=documents)
        self.buffer, self.buffered = [], 0
        self.tokens_added += int(tokens.size)
        self.on_shard()
