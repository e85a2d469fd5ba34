"""`python -m bench.data`: the data path's throughput, as ratios against baselines measured in the same run.

1. prepare's tokenization (all cores: worker pool + shard writing) vs single-process tiktoken
   `encode_ordinary_batch` on the same text (goal: near-linear in cores);
2. the loader's tokens/s for one rank, and its multiple of the tiny model's training tokens/s
   (fwd+bwd on CPU here; goal >= 100x: the loader is never the bottleneck);
3. the loader's start-up (opening the train split) without shard verification, with it on first use on the
   machine (every shard hashed), and with it cached (stamps only), on the dataset prepared here (or
   --startup-dataset, e.g. the default .cache/data/stdlib-bpe8192) and on a bigger synthetic one.
   `--only-startup` skips 1 and 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from data.config import DataConfig, SourceConfig, TokenizerConfig
from data.prepare import prepare_dataset, tokenizer_for
from data.shards import MANIFEST, VERSION, atomic_write_json, manifest_fingerprint, write_shard
from data.sources import stdlib_files
from data.verify import CACHE_ENV


def _corpus(root: Path, max_bytes: int) -> list[str]:
    """Standard-library files up to `max_bytes`, written as .txt documents under `root`."""
    root.mkdir(parents=True)
    docs, size = [], 0
    for i, path in enumerate(stdlib_files()):
        if size >= max_bytes:
            break
        raw = path.read_bytes()
        (root / f"{i:05d}.txt").write_bytes(raw)
        docs.append(raw.decode("utf-8", errors="replace"))
        size += len(raw)
    return docs


def _config(corpus: Path, out: Path, tokenizer: Path, workers: int) -> DataConfig:
    return DataConfig(
        name="bench",
        dir=str(out),
        source=SourceConfig(kind="text", paths=[str(corpus / "*.txt")]),
        tokenizer=TokenizerConfig(name="bpe", vocab_size=8192, path=str(tokenizer)),
        shard_tokens=1_000_000,
        val_fraction=0.01,
        num_workers=workers,
    )


def _timed(fn: object) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _pool_start_s(workers: int, enc: object) -> float:
    """Seconds to start prepare's worker pool (spawned interpreters, pickled encoding) and run a no-op."""
    import multiprocessing as mp

    from data.encode import encode_batch, init_worker

    start = time.perf_counter()
    with mp.get_context("spawn").Pool(workers, initializer=init_worker, initargs=(enc,)) as pool:
        pool.map(encode_batch, [[""]] * workers)
    return time.perf_counter() - start


def _training_tokens_per_s(seq_len: int, micro_batch: int, steps: int) -> float | None:
    """The tiny model's fwd+bwd tokens/s on this machine, or None when the model package is unavailable."""
    try:
        import torch

        from model import ModelConfig, Transformer
    except ImportError:
        return None
    torch.manual_seed(0)
    cfg = ModelConfig()
    model = Transformer(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (micro_batch, seq_len + 1))

    def step() -> None:
        logits = model(tokens[:, :-1]).float()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()

    step()  # warm-up: allocations, first-call dispatch
    elapsed = sum(_timed(step)[0] for _ in range(steps))
    return micro_batch * seq_len * steps / elapsed


def _synthetic_dataset(root: Path, n_tokens: int, shard_tokens: int = 2_000_000, vocab: int = 8192) -> Path:
    """A dataset of random tokens with a sealed manifest, as prepare would write it, without tokenizing."""
    root.mkdir(parents=True)
    fingerprint = "ab" * 32
    rng = np.random.default_rng(0)
    splits: dict[str, dict] = {}
    for split, total in (("train", n_tokens), ("val", shard_tokens)):
        shards = []
        for i, start in enumerate(range(0, total, shard_tokens)):
            tokens = rng.integers(0, vocab, min(shard_tokens, total - start), dtype=np.uint16)
            name = f"{split}_{i:06d}.bin"
            sha = write_shard(root / name, tokens, vocab, fingerprint)
            shards.append({"file": name, "tokens": int(tokens.size), "sha256": sha})
        splits[split] = {"shards": shards, "tokens": total, "documents": 1}
    manifest = {
        "format_version": VERSION,
        "settings": {},
        "source": {"kind": "synthetic"},
        "tokenizer": {
            "name": "synthetic",
            "n_vocab": vocab,
            "eot_token": vocab - 1,
            "fingerprint": fingerprint,
        },
        "dtype": "uint16",
        "splits": splits,
    }
    manifest["fingerprint"] = manifest_fingerprint(manifest)
    atomic_write_json(root / MANIFEST, manifest)
    return root


def _startup_figures(dataset_dir: Path, label: str, repeats: int) -> None:
    """Seconds to open the train split, best of `repeats` (the least disturbed by other work on the machine):
    unverified, verified with an empty stamp cache (first use on the machine), and verified again with the
    stamps in place. The shards are in the page cache each time."""
    from data.loader import TokenLoader  # torch: see the note in main's docstring
    from data.spec import LoaderSpec

    def open_s(verify: bool, cache: Path) -> float:
        os.environ[CACHE_ENV] = str(cache)
        start = time.perf_counter()
        TokenLoader(dataset_dir, LoaderSpec("train", 256, 16, seed=0, prefetch=0, verify=verify)).close()
        return time.perf_counter() - start

    previous = os.environ.get(CACHE_ENV)
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        caches = [Path(tmp) / f"cache{i}" for i in range(repeats)]
        open_s(False, caches[0])  # warm the page cache and the imports
        off = min(open_s(False, caches[0]) for _ in range(repeats))
        first = min(open_s(True, cache) for cache in caches)  # each cache starts empty
        cached = min(open_s(True, caches[0]) for _ in range(repeats))
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous
    train = json.loads((dataset_dir / MANIFEST).read_text())["splits"]["train"]
    size = sum((dataset_dir / s["file"]).stat().st_size for s in train["shards"]) / 1e6
    print(
        f"loader start-up, {label}: train split {train['tokens'] / 1e6:.1f}M tokens in "
        f"{len(train['shards'])} shards ({size:.0f} MB), best of {repeats}"
    )
    print(
        f"  verify off: {off * 1e3:7.1f} ms | verify, first use on this machine: {first * 1e3:7.1f} ms "
        f"({size / max(first - off, 1e-9):.0f} MB/s hashed) | verify, cached: {cached * 1e3:7.1f} ms "
        f"({cached / off:.2f}x off)"
    )


def main(argv: list[str] | None = None) -> None:
    """Imports torch only after prepare: spawned tokenizer workers re-import the main module (this one
    under `python -m bench.data`), and a torch import there would be timed as part of prepare."""
    parser = argparse.ArgumentParser(prog="python -m bench.data", description=__doc__)
    parser.add_argument("--mbytes", type=float, default=24.0, help="MB of stdlib text to tokenize")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--loader-seconds", type=float, default=3.0)
    parser.add_argument("--train-steps", type=int, default=2, help="timed fwd+bwd steps of the tiny model")
    parser.add_argument(
        "--startup-dataset", type=Path, default=None, help="prepared dataset whose loader start-up is timed"
    )
    parser.add_argument(
        "--synthetic-mtokens",
        type=float,
        default=200.0,
        help="M tokens of the bigger start-up dataset (0: skip)",
    )
    parser.add_argument("--startup-repeats", type=int, default=3)
    parser.add_argument("--only-startup", action="store_true", help="only the loader start-up figures")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        prepared = None if args.only_startup else _throughput(args, tmp)
        if args.startup_dataset is not None:
            _startup_figures(args.startup_dataset, str(args.startup_dataset), args.startup_repeats)
        elif prepared is not None:
            _startup_figures(prepared, "the stdlib dataset prepared above", args.startup_repeats)
        if args.synthetic_mtokens > 0:
            synthetic = _synthetic_dataset(tmp / "synthetic", int(args.synthetic_mtokens * 1e6))
            _startup_figures(synthetic, "synthetic random tokens", args.startup_repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _throughput(args: argparse.Namespace, tmp: Path) -> Path:
    """Parts 1 and 2; returns the dataset directory it prepared."""
    cores = len(os.sched_getaffinity(0))
    docs = _corpus(tmp / "corpus", int(args.mbytes * 1e6))
    mbytes = sum(len(d.encode()) for d in docs) / 1e6
    tok_path = tmp / "tokenizer"
    train_s, enc = _timed(lambda: tokenizer_for(_config(tmp / "corpus", tmp / "tok", tok_path, 1)))
    print(f"corpus: {len(docs)} stdlib files, {mbytes:.1f} MB; BPE 8192 trained in {train_s:.1f} s")

    batch_s, encoded = _timed(lambda: enc.encode_ordinary_batch(docs))
    n_tokens = sum(len(t) for t in encoded) + len(docs)  # + one eot per document, as prepare writes
    one_s, _ = _timed(lambda: enc.encode_ordinary_batch(docs, num_threads=1))
    print(f"tiktoken encode_ordinary_batch, 1 process, 8 threads: {n_tokens / batch_s / 1e6:6.2f} M tok/s")
    print(f"tiktoken encode_ordinary_batch, 1 process, 1 thread:  {n_tokens / one_s / 1e6:6.2f} M tok/s")

    prep_s, manifest = _timed(lambda: prepare_dataset(_config(tmp / "corpus", tmp / "ds", tok_path, 0)))
    print(
        f"prepare, {cores} worker processes (read + tokenize + write shards, spawn included): "
        f"{n_tokens / prep_s / 1e6:6.2f} M tok/s"
    )
    print(
        f"  ratio prepare / encode_ordinary_batch: {batch_s / prep_s:.2f}x (8 threads), "
        f"{one_s / prep_s:.2f}x (1 thread); {cores} cores"
    )
    serial_s, _ = _timed(lambda: prepare_dataset(_config(tmp / "corpus", tmp / "ds1", tok_path, 1)))
    print(
        f"prepare, 1 process (no pool): {n_tokens / serial_s / 1e6:6.2f} M tok/s; "
        f"speed-up of {cores} workers over it: {serial_s / prep_s:.2f}x"
    )
    pool_s = _pool_start_s(cores, enc)
    steady_s = prep_s - pool_s
    print(
        f"  without the one-off worker start-up ({pool_s:.1f} s): "
        f"{n_tokens / steady_s / 1e6:.2f} M tok/s, "
        f"{one_s / steady_s:.2f}x the 1-thread baseline"
    )

    from data.loader import TokenLoader  # here, not at the top: see the note in main's docstring
    from data.spec import LoaderSpec

    loader = TokenLoader(manifest.parent, LoaderSpec("train", args.seq_len, args.micro_batch, seed=0))
    batches, start = 0, time.perf_counter()
    for _ in loader:
        batches += 1
        if time.perf_counter() - start >= args.loader_seconds:
            break
    loader_tps = batches * args.micro_batch * args.seq_len / (time.perf_counter() - start)
    loader.close()
    shape = f"[{args.micro_batch}, {args.seq_len}]"
    print(f"loader, 1 rank, {shape} batches, prefetch 2: {loader_tps / 1e6:.2f} M tok/s")

    train_tps = _training_tokens_per_s(args.seq_len, args.micro_batch, args.train_steps)
    if train_tps is None:
        print("tiny model training: n/a (model package not importable); loader / training ratio: n/a")
    else:
        print(f"tiny model fwd+bwd, [{args.micro_batch}, {args.seq_len}], CPU: {train_tps:,.0f} tok/s")
        print(f"  ratio loader / training: {loader_tps / train_tps:,.0f}x (goal >= 100x)")
    return manifest.parent


if __name__ == "__main__":
    main()
