"""`python -m bench.sources`: loader throughput for a 3-source mixture and from S3 on 127.0.0.1, as multiples
of the tiny model's training tokens/s measured in the same run (goal: the loader is never the bottleneck).

1. TokenLoader over one local dataset (the reference);
2. MixtureLoader over three datasets sharing one BPE (weights 0.5 / 0.3 / 0.2);
3. TokenLoader over the first dataset uploaded to moto's S3 server on 127.0.0.1 (needs the dev extra):
   cold (every shard downloaded and verified while reading) and warm (a second pass over the cache).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.data import _training_tokens_per_s
from data.config import DataConfig, SourceConfig, TokenizerConfig
from data.prepare import prepare_dataset
from data.sources import stdlib_files
from data.spec import LoaderSpec


def _prepare(root: Path, name: str, files: list[Path], tokenizer: Path) -> Path:
    corpus = root / f"{name}_txt"
    corpus.mkdir(parents=True)
    for i, path in enumerate(files):
        (corpus / f"{i:05d}.txt").write_bytes(path.read_bytes())
    cfg = DataConfig(
        name=name,
        dir=str(root / name),
        source=SourceConfig(kind="text", paths=[str(corpus / "*.txt")]),
        tokenizer=TokenizerConfig(name="bpe", vocab_size=8192, path=str(tokenizer), train_bytes=5_000_000),
        shard_tokens=200_000,
        val_fraction=0.05,  # every source needs a non-empty val split
        num_workers=1,
    )
    prepare_dataset(cfg)
    return Path(cfg.dir)


def _tokens_per_s(loader: object, seconds: float, limit: int | None = None) -> tuple[float, int]:
    """Tokens/s over `seconds` of iteration (or `limit` batches), and the batches read."""
    batches, start = 0, time.perf_counter()
    for _ in loader:
        batches += 1
        if time.perf_counter() - start >= seconds or batches == limit:
            break
    elapsed = time.perf_counter() - start
    loader.close()
    return batches * loader.micro_batch * loader.seq_len / elapsed, batches


def _s3_loaders(dataset: Path, root: Path, seq_len: int, micro_batch: int) -> tuple[object, object] | None:
    """(cold loader, warm loader) over the dataset uploaded to a moto server on 127.0.0.1, or None."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        return None
    from data.cache import ShardCache
    from data.loader import TokenLoader
    from data.objectstore import filesystem
    from data.upload import upload_dataset

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    filesystem("s3://bench")[0].mkdir("bench")
    upload_dataset(dataset, "s3://bench/ds")
    cache = ShardCache(root / "cache", 10**10)
    cold = TokenLoader("s3://bench/ds", LoaderSpec("train", seq_len, micro_batch, 0), cache=cache)
    warm = TokenLoader("s3://bench/ds", LoaderSpec("train", seq_len, micro_batch, 0), cache=cache)
    return cold, warm


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sources", description=__doc__)
    parser.add_argument("--files", type=int, default=150, help="stdlib files per source")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--train-steps", type=int, default=2)
    args = parser.parse_args(argv)
    from data.loader import TokenLoader
    from data.mixture import MixtureLoader, MixtureSource

    tmp = Path(tempfile.mkdtemp(prefix="bench-sources-"))
    try:
        files, n = stdlib_files(), args.files
        tokenizer = tmp / "tokenizer"
        dirs = [_prepare(tmp, f"s{i}", files[i * n : (i + 1) * n], tokenizer) for i in range(3)]
        seq, micro = args.seq_len, args.micro_batch
        train_tps = _training_tokens_per_s(seq, micro, args.train_steps)
        print(f"tiny model fwd+bwd, [{micro}, {seq}], CPU: {train_tps:,.0f} tok/s (the unit below)")

        def report(what: str, tps: float) -> None:
            print(f"{what:44s} {tps / 1e6:7.2f} M tok/s = {tps / train_tps:8,.0f}x training")

        single = TokenLoader(dirs[0], LoaderSpec("train", seq, micro, 0))
        report("loader, 1 local dataset", _tokens_per_s(single, args.seconds)[0])
        sources = [
            MixtureSource(f"s{i}", str(d), w)
            for i, (d, w) in enumerate(zip(dirs, (0.5, 0.3, 0.2), strict=True))
        ]
        mixture = MixtureLoader(sources, LoaderSpec("train", seq, micro, 0))
        report("loader, 3-source mixture (0.5/0.3/0.2)", _tokens_per_s(mixture, args.seconds)[0])
        s3 = _s3_loaders(dirs[0], tmp, seq, micro)
        if s3 is None:
            print("loader from S3: n/a (moto not installed: pip install -e '.[dev]')")
            return
        cold, warm = s3
        cold_tps, batches = _tokens_per_s(cold, 1e9, limit=200)
        report(f"loader from S3 on 127.0.0.1, cold cache ({batches} batches)", cold_tps)
        report("loader from S3 on 127.0.0.1, warm cache", _tokens_per_s(warm, args.seconds)[0])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
