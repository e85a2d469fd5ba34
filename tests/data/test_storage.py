"""Datasets in object storage, against a real S3 API: moto's server on 127.0.0.1, reached by s3fs through a
TCP proxy that can drop connections mid-response. `python -m data.prepare` uploads, TokenLoader reads back."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from data.cache import ShardCache
from data.loader import TokenLoader
from data.objectstore import filesystem
from data.shards import MANIFEST, DatasetError
from data.spec import LoaderSpec

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

REPO = Path(__file__).resolve().parents[2]
SECRET = "never-log-this-5f3a9c"
BUCKET = "diffv2-test"
SEQ = 256


class DroppingProxy:
    """Forwards TCP connections to `target`; while `drops` > 0, a response that passes `cut_after` bytes has
    its connection closed half way (and `drops` counts down): a network that fails mid-download."""

    def __init__(self, target: tuple[str, int], cut_after: int = 4096) -> None:
        self.target = target
        self.cut_after = cut_after
        self.drops = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self._listener.accept()
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, response: bool) -> None:
        sent = 0
        try:
            while chunk := src.recv(1024):
                dst.sendall(chunk)
                sent += len(chunk)
                if response and sent > self.cut_after:
                    with self._lock:
                        cut = self.drops > 0
                        if cut:
                            self.drops -= 1
                            self.cuts += 1
                    if cut:
                        break
                    sent = -(1 << 60)  # this response may pass; later ones on the connection too
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> DroppingProxy:
    """moto's S3 server on 127.0.0.1 behind a DroppingProxy; the AWS_* variables point s3fs at the proxy."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    proxy = DroppingProxy(server.get_host_and_port())
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    previous = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    fs, _ = filesystem(f"s3://{BUCKET}")
    fs.mkdir(BUCKET)
    yield proxy
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


@pytest.fixture(scope="session")
def uploaded(s3: DroppingProxy, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, str]:
    """(URL, local staging copy, prepare's console output) of a dataset `python -m data.prepare` uploaded."""
    cache = tmp_path_factory.mktemp("prepare-cache")
    url = f"s3://{BUCKET}/stdlib40"
    proc = subprocess.run(
        [sys.executable, "-m", "data.prepare", "data=stdlib_small", "data.source.max_docs=40",
         "data.shard_tokens=5000", "data.num_workers=1", f"data.dir={url}", f"data.cache.dir={cache}"],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (stage,) = (cache / "staging").iterdir()
    return url, stage, proc.stdout + proc.stderr


def shard_files(cache_dir: Path) -> list[Path]:
    """Cached shards and download temporaries (the lock file and use markers aside)."""
    return [*cache_dir.glob("*.bin"), *cache_dir.glob(".*.tmp*")]


def stream(loader: TokenLoader, steps: int) -> list[np.ndarray]:
    out = [next(loader)[0].numpy() for _ in range(steps)]
    loader.close()
    return out


def test_prepare_uploads_and_the_loader_reads_the_same_windows_as_the_local_dataset(
    uploaded: tuple[str, Path, str], tmp_path: Path
) -> None:
    url, stage, output = uploaded
    fs, root = filesystem(url)
    manifest = json.loads(fs.cat_file(f"{root}/{MANIFEST}"))
    assert manifest == json.loads((stage / MANIFEST).read_text())
    assert len(manifest["splits"]["train"]["shards"]) > 10 and SECRET not in output
    remote = TokenLoader(url, LoaderSpec("train", SEQ, 4, 5), cache=ShardCache(tmp_path, 10**8))
    local = TokenLoader(stage, LoaderSpec("train", SEQ, 4, 5))
    for got, want in zip(stream(remote, 5), stream(local, 5), strict=True):
        np.testing.assert_array_equal(got, want)
    assert remote.fingerprint == local.fingerprint


def test_shards_of_the_next_batches_are_downloaded_in_the_background(
    uploaded: tuple[str, Path, str], tmp_path: Path
) -> None:
    url, stage, _ = uploaded
    cache = ShardCache(tmp_path, 10**8)
    loader = TokenLoader(
        url, LoaderSpec("train", SEQ, 8, 0, shuffle=False, prefetch=0), cache=cache, lookahead=4
    )
    next(loader)  # reads 8 windows of shard 0; the next 4 batches reach shards 1 and 2
    for future in list(loader._data._ahead.values()):
        future.result()
    shards = json.loads((stage / MANIFEST).read_text())["splits"]["train"]["shards"]
    assert all(cache.path(s["sha256"]).is_file() for s in shards[:3])
    assert not cache.path(shards[4]["sha256"]).exists()
    loader.close()


def test_a_dropped_connection_is_retried_and_the_shard_arrives_intact(
    s3: DroppingProxy, uploaded: tuple[str, Path, str], tmp_path: Path
) -> None:
    url, stage, _ = uploaded
    loader = TokenLoader(url, LoaderSpec("train", SEQ, 4, 5, prefetch=0), cache=ShardCache(tmp_path, 10**8))
    s3.drops, cuts = 1, s3.cuts
    got = stream(loader, 2)
    assert s3.cuts == cuts + 1 and s3.drops == 0
    np.testing.assert_array_equal(got, stream(TokenLoader(stage, LoaderSpec("train", SEQ, 4, 5)), 2))


def test_a_connection_that_keeps_dropping_ends_in_an_error_naming_the_shard(
    s3: DroppingProxy, uploaded: tuple[str, Path, str], tmp_path: Path
) -> None:
    url, _, _ = uploaded
    cache = ShardCache(tmp_path, 10**8, retries=2, backoff_s=0.1)
    loader = TokenLoader(url, LoaderSpec("train", SEQ, 4, 5, prefetch=0), cache=cache, lookahead=0)
    s3.drops = 10**6
    try:
        with pytest.raises(
            DatasetError, match=rf"downloading s3://{BUCKET}/stdlib40/train_\d+\.bin: failed 2"
        ):
            next(loader)
    finally:
        s3.drops = 0
    assert not shard_files(tmp_path)  # no shard and no half-written temporary


def test_bytes_that_differ_from_the_manifest_name_the_shard_and_are_not_cached(
    uploaded: tuple[str, Path, str], tmp_path: Path
) -> None:
    url, stage, _ = uploaded
    fs, root = filesystem(url)
    bad_url = f"s3://{BUCKET}/damaged"
    fs.put(str(stage), f"{BUCKET}/damaged", recursive=True)
    first = json.loads((stage / MANIFEST).read_text())["splits"]["train"]["shards"][0]["file"]
    payload = bytearray((stage / first).read_bytes())
    payload[-1] ^= 0xFF  # same size and header, one token changed
    fs.pipe_file(f"{BUCKET}/damaged/{first}", bytes(payload))
    spec = LoaderSpec("train", SEQ, 1, 0, shuffle=False, prefetch=0)
    loader = TokenLoader(bad_url, spec, lookahead=0, cache=ShardCache(tmp_path, 10**8))
    with pytest.raises(
        DatasetError, match=rf"s3://{BUCKET}/damaged/{first}: downloaded bytes have sha256 .* not cached"
    ):
        next(loader)
    assert not shard_files(tmp_path)


def test_a_resumed_job_with_a_cold_cache_continues_the_stream(
    uploaded: tuple[str, Path, str], tmp_path: Path
) -> None:
    url, stage, _ = uploaded
    expected = stream(TokenLoader(stage, LoaderSpec("train", SEQ, 4, 5)), 6)
    first = TokenLoader(url, LoaderSpec("train", SEQ, 4, 5), cache=ShardCache(tmp_path / "a", 10**8))
    got = stream(first, 3)
    cold = ShardCache(tmp_path / "b", 10**8)
    resumed = TokenLoader(url, LoaderSpec("train", SEQ, 4, 5), cache=cold)
    resumed.load_state_dict(first.state_dict())
    got += stream(resumed, 3)
    assert cold.downloads > 0
    for step, (have, want) in enumerate(zip(got, expected, strict=True)):
        np.testing.assert_array_equal(have, want, err_msg=f"batch {step}")


def test_the_cache_stays_within_its_bound(uploaded: tuple[str, Path, str], tmp_path: Path) -> None:
    url, stage, _ = uploaded
    shard_bytes = max(p.stat().st_size for p in stage.glob("train_*.bin"))
    cache = ShardCache(tmp_path, 3 * shard_bytes)
    loader = TokenLoader(url, LoaderSpec("train", SEQ, 8, 5), cache=cache, lookahead=1)
    for _ in range(6):
        next(loader)
        with cache.locked(exclusive=False):  # the background downloads evict files while this looks
            assert sum(p.stat().st_size for p in tmp_path.glob("*.bin")) <= 3 * shard_bytes
    loader.close()
    assert cache.downloads > 3  # shards came and went
    with pytest.raises(DatasetError, match=r"data.cache.max_gb=.* holds fewer than 2 shards"):
        TokenLoader(url, LoaderSpec("train", SEQ, 8, 5), cache=ShardCache(tmp_path, shard_bytes))


def test_credentials_in_a_url_are_refused_without_being_repeated() -> None:
    with pytest.raises(DatasetError, match="credentials in a data URL") as err:
        TokenLoader(f"s3://AKIA:{SECRET}@{BUCKET}/x", LoaderSpec("train", SEQ, 1, 0))
    assert SECRET not in str(err.value)


@pytest.mark.slow
def test_training_from_s3_keeps_credentials_out_of_logs_configs_and_wandb(
    uploaded: tuple[str, Path, str], tmp_path: Path
) -> None:
    url, _, _ = uploaded
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "train", f"data.dir={url}", "data.prepare_if_missing=false",
         f"data.cache.dir={tmp_path / 'cache'}", "model.d_model=64", "model.n_layers=1", "model.n_heads=4",
         "model.n_kv_heads=2", "model.head_dim=16", "model.ffn_hidden=128", "model.vocab_size=2048",
         "model.max_seq_len=64", "trainer.seq_len=64", "trainer.micro_batch=2",
         "trainer.global_batch_tokens=128", "trainer.max_steps=2", "trainer.eval_batches=1",
         "optim.warmup_steps=1", "wandb.mode=offline", f"run.dir={run}"],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert SECRET not in proc.stdout + proc.stderr
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in files) and any("wandb" in p.parts for p in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
