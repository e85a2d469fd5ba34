"""Datasets in object storage, against a real S3 API: moto's server on 127.0.0.1, reached by s3fs through a
TCP proxy that can drop connections mid-response. `python -m data.prepare` uploads, TokenLoader reads back."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
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


def test_a_cached_shard_altered_on_disk_is_downloaded_again(
    uploaded: tuple[str, Path, str], tmp_path: Path
) -> None:
    url, stage, _ = uploaded
    spec = LoaderSpec("train", SEQ, 4, 0, shuffle=False, prefetch=0)
    expected = stream(TokenLoader(stage, spec), 2)
    np.testing.assert_array_equal(stream(TokenLoader(url, spec, ShardCache(tmp_path, 10**8), 0), 2), expected)
    first = json.loads((stage / MANIFEST).read_text())["splits"]["train"]["shards"][0]["sha256"]
    cached = tmp_path / f"{first}.bin"
    payload = bytearray(cached.read_bytes())
    payload[64 + 2 * 5] ^= 0x01  # same size and header; token 5 becomes another valid id
    cached.write_bytes(bytes(payload))
    cache = ShardCache(tmp_path, 10**8)
    np.testing.assert_array_equal(stream(TokenLoader(url, spec, cache, 0), 2), expected)
    assert (
        cache.downloads == 1 and cached.read_bytes() == (stage / f"{stage_file(stage, first)}").read_bytes()
    )


def stage_file(stage: Path, sha256: str) -> str:
    shards = json.loads((stage / MANIFEST).read_text())["splits"]["train"]["shards"]
    return next(s["file"] for s in shards if s["sha256"] == sha256)


def train_from(url: str, cache_dir: Path, run_dir: Path, *extra: str, timeout: float = 180) -> object:
    """`python -m train` on a dataset URL with a micro model, for 2 steps."""
    return subprocess.run(
        [sys.executable, "-m", "train", f"data.dir={url}", "data.prepare_if_missing=false",
         f"data.cache.dir={cache_dir}", "model.d_model=64", "model.n_layers=1", "model.n_heads=4",
         "model.n_kv_heads=2", "model.head_dim=16", "model.ffn_hidden=128", "model.vocab_size=2048",
         "model.max_seq_len=64", "trainer.seq_len=64", "trainer.micro_batch=2",
         "trainer.global_batch_tokens=128", "trainer.max_steps=2", "trainer.eval_batches=1",
         "optim.warmup_steps=1", "wandb.mode=disabled", f"run.dir={run_dir}", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_a_shard_deleted_from_the_bucket_makes_the_dataset_unavailable_naming_it(
    uploaded: tuple[str, Path, str], tmp_path: Path
) -> None:
    url, stage, _ = uploaded
    fs, _ = filesystem(url)
    fs.put(str(stage), f"{BUCKET}/holed", recursive=True)
    shards = json.loads((stage / MANIFEST).read_text())["splits"]["train"]["shards"]
    for shard in shards:  # whichever shard the first batch reads is gone
        fs.rm_file(f"{BUCKET}/holed/{shard['file']}")
    proc = train_from(f"s3://{BUCKET}/holed", tmp_path / "cache", tmp_path / "run")
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert re.match(
        rf"dataset unavailable: s3://{BUCKET}/holed/train_\d+\.bin: the shard is not in the bucket", last
    )
    assert "Traceback" not in proc.stderr


def test_a_frozen_server_ends_the_job_with_an_error_instead_of_hanging_it(
    uploaded: tuple[str, Path, str], tmp_path: Path
) -> None:
    import s3fs

    _, stage, _ = uploaded
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
        for _ in range(100):  # the server takes a moment to listen
            try:
                fs.mkdir("frozen")
                break
            except Exception:
                time.sleep(0.1)
        fs.put(str(stage), "frozen/ds", recursive=True)
        os.kill(server.pid, signal.SIGSTOP)  # connections still open, nothing answers
        env_before = os.environ["AWS_ENDPOINT_URL"]
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        try:
            start = time.monotonic()
            limits = ["data.cache.timeout_s=1", "data.cache.retries=2"]
            proc = train_from("s3://frozen/ds", tmp_path / "cache", tmp_path / "run", *limits, timeout=120)
            took = time.monotonic() - start
        finally:
            os.environ["AWS_ENDPOINT_URL"] = env_before
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.terminate()
        server.wait(timeout=30)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "s3://frozen/ds/manifest.json: failed 2 times" in proc.stderr.strip().splitlines()[-1]
    assert took < 60


def test_loaders_sharing_a_cache_directory_share_its_bound(
    uploaded: tuple[str, Path, str], tmp_path: Path
) -> None:
    url, stage, _ = uploaded
    shard_bytes = max(p.stat().st_size for p in stage.glob("train_*.bin"))
    bound = 3 * shard_bytes
    loaders = [
        TokenLoader(
            url, LoaderSpec("train", SEQ, 8, seed, prefetch=0), ShardCache(tmp_path, bound), lookahead=0
        )
        for seed in (1, 2)
    ]  # e.g. a job's train and val loaders, or two jobs
    for _ in range(6):
        for loader in loaders:
            next(loader)
            assert sum(p.stat().st_size for p in tmp_path.glob("*.bin")) <= bound
    for loader in loaders:
        loader.close()


CACHE_WORKER = """
import sys
import numpy as np
from data.cache import ShardCache
from data.loader import TokenLoader
from data.spec import LoaderSpec

url, stage, cache_dir, bound, index = sys.argv[1:]
for round in range(12):
    for _ in range(100):  # caches created while the other processes download and evict
        ShardCache(cache_dir, int(bound))
    spec = LoaderSpec("train", 256, 8, seed=int(index) * 100 + round, prefetch=0)
    remote = TokenLoader(url, spec, ShardCache(cache_dir, int(bound)), lookahead=2)
    local = TokenLoader(stage, spec)
    for _ in range(3):
        np.testing.assert_array_equal(next(remote)[0].numpy(), next(local)[0].numpy())
    remote.close()
"""


def test_processes_sharing_a_cache_directory_under_eviction_all_read_their_stream(
    uploaded: tuple[str, Path, str], tmp_path: Path
) -> None:
    url, stage, _ = uploaded
    bound = 2 * max(p.stat().st_size for p in stage.glob("train_*.bin"))  # the least a loader accepts
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CACHE_WORKER,
                url,
                str(stage),
                str(tmp_path / "cache"),
                str(bound),
                str(i),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(3)
    ]
    results = [worker.communicate(timeout=300) for worker in workers]
    for worker, (_, err) in zip(workers, results, strict=True):
        assert worker.returncode == 0, err[-3000:]


def test_a_dataset_url_gets_the_local_manifest_checks(
    uploaded: tuple[str, Path, str], tmp_path: Path
) -> None:
    url, stage, _ = uploaded
    fs, _ = filesystem(url)
    spec = LoaderSpec("train", SEQ, 1, 0, prefetch=0)
    manifest = json.loads((stage / MANIFEST).read_text())
    cut = json.loads(json.dumps(manifest))
    cut["splits"]["train"]["shards"].pop()  # a shard dropped from the listing, fingerprint left as it was
    fs.put(str(stage), f"{BUCKET}/cut", recursive=True)
    fs.pipe_file(f"{BUCKET}/cut/{MANIFEST}", json.dumps(cut).encode())
    with pytest.raises(DatasetError, match=rf"s3://{BUCKET}/cut/{MANIFEST}: its content does not match"):
        TokenLoader(f"s3://{BUCKET}/cut", spec, ShardCache(tmp_path, 10**8))
    fs.put(str(stage), f"{BUCKET}/extra", recursive=True)
    fs.put_file(
        str(stage / manifest["splits"]["train"]["shards"][0]["file"]), f"{BUCKET}/extra/train_999999.bin"
    )
    with pytest.raises(DatasetError, match=r"also holds 1 it does not list \(train_999999\.bin\)"):
        TokenLoader(f"s3://{BUCKET}/extra", spec, ShardCache(tmp_path, 10**8))
