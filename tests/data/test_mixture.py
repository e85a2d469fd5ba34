"""MixtureLoader: a seeded weighted interleave of several datasets that keeps TokenLoader's contract (one
global stream, every source read without repeats per its own epoch, exact resume on another world size)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from data.config import DataConfig, TokenizerConfig
from data.loader import TokenLoader
from data.mixture import BLOCK, MixtureLoader, MixtureSource
from data.prepare import prepare_dataset
from data.shards import DatasetError
from data.sources import stdlib_files
from data.spec import LoaderSpec

SEQ = 32
WEIGHTS = {"big": 0.6, "mid": 0.3, "small": 0.1}
FILES = {"big": slice(0, 30), "mid": slice(30, 40), "small": slice(40, 42)}
"""Disjoint standard-library files per source, so a window's content tells which source it came from."""


def _corpus(root: Path, files: list[Path]) -> Path:
    root.mkdir(parents=True)
    for i, path in enumerate(files):
        (root / f"doc_{i:04d}.txt").write_bytes(path.read_bytes())
    return root


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory, make_config: object) -> list[MixtureSource]:
    """Three prepared datasets sharing one BPE (trained on the first while preparing it)."""
    root = tmp_path_factory.mktemp("mixture")
    files = stdlib_files()
    out: list[MixtureSource] = []
    tokenizer = root / "big" / "tokenizer"
    for name, weight in WEIGHTS.items():
        corpus = _corpus(root / f"{name}_txt", files[FILES[name]])
        cfg = make_config(corpus, root / name, val_fraction=0.2, num_workers=1)
        cfg.tokenizer = TokenizerConfig(name="bpe", vocab_size=512, path=str(tokenizer))
        prepare_dataset(cfg)
        out.append(MixtureSource(name, cfg.dir, weight))
    return out


def mixture(srcs: list[MixtureSource], world: int, micro: int, seed: int = 3, **kw: object) -> list:
    return [
        MixtureLoader(srcs, LoaderSpec("train", SEQ, micro, seed, dp_rank=rank, dp_size=world, **kw))
        for rank in range(world)
    ]


def take(group: list, accum: int, steps: int) -> list[np.ndarray]:
    """Per optimizer step, the windows (inputs) of every micro-step and rank in global order."""
    out = []
    for _ in range(steps):
        out.append(np.concatenate([next(loader)[0].numpy() for _ in range(accum) for loader in group]))
    for loader in group:
        loader.close()
    return out


def sorted_rows(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort(rows.T[::-1])]


def source_windows(src: MixtureSource) -> np.ndarray:
    loader = TokenLoader(src.dir, LoaderSpec("train", SEQ, 1, 0, shuffle=False, prefetch=0))
    return loader._data.windows(np.arange(loader.num_sequences))[:, :-1]


def test_each_block_holds_the_weights_exactly_in_a_seeded_order(sources: list[MixtureSource]) -> None:
    a, b, c = (mixture(sources, 1, 8, seed=s, prefetch=0)[0] for s in (1, 1, 2))
    assert a.counts.tolist() == [2458, 1229, 409] and a.counts.sum() == BLOCK  # 0.6 / 0.3 / 0.1 of 4096
    read = a.windows_read(2 * BLOCK + 100)
    assert read.tolist() == (2 * a.counts + np.bincount(a.locate(2 * BLOCK, 100)[0], minlength=3)).tolist()
    np.testing.assert_array_equal(a.windows_at(5000, 64), b.windows_at(5000, 64))
    assert not np.array_equal(a.locate(0, 64)[0], c.locate(0, 64)[0])  # another seed, another interleave


def test_every_source_is_read_without_repeats_per_epoch_and_a_small_one_cycles_and_says_so(
    sources: list[MixtureSource],
) -> None:
    loader = mixture(sources, 1, 64)[0]
    n_small = source_windows(sources[2]).shape[0]
    steps = -(-int(2.5 * n_small * BLOCK / loader.counts[2]) // 64)  # the small source reads ~2.5 epochs
    stream = np.concatenate(take([loader], 1, steps))
    metrics = loader.metrics()
    by_content = {}
    for s, src in enumerate(sources):
        for row in source_windows(src):
            by_content.setdefault(row.tobytes(), s)
    which = np.array([by_content[row.tobytes()] for row in stream])
    read = loader.windows_read()
    assert np.bincount(which, minlength=3).tolist() == read.tolist()
    for s, src in enumerate(sources):
        rows, windows = stream[which == s], source_windows(src)
        n = len(windows)
        for epoch in range(len(rows) // n):  # every complete epoch holds each window exactly once
            got = rows[epoch * n : (epoch + 1) * n]
            np.testing.assert_array_equal(
                sorted_rows(got), sorted_rows(windows), err_msg=f"{src.name} {epoch}"
            )
        assert metrics[f"data/{src.name}/tokens"] == read[s] * SEQ
        assert metrics[f"data/{src.name}/epochs"] == pytest.approx(read[s] / n)
    assert metrics["data/small/epochs"] > 2 > 1 > metrics["data/big/epochs"]


# (world, micro_batch, accumulation) before and after: 12 windows per optimizer step either way
@pytest.mark.parametrize("before,after", [((2, 3, 2), (3, 2, 2)), ((2, 6, 1), (3, 4, 1))])
def test_resume_from_two_ranks_on_three_continues_the_uninterrupted_mixture(
    sources: list[MixtureSource], before: tuple[int, int, int], after: tuple[int, int, int]
) -> None:
    (w1, m1, a1), (w2, m2, a2) = before, after
    steps_before = BLOCK // 12 - 2  # resume just before a block boundary, then run across it
    expected = take(mixture(sources, w1, m1), a1, steps_before + 6)
    first = mixture(sources, w1, m1)
    got = take(first, a1, steps_before)
    states = [loader.state_dict() for loader in first]
    assert all(s == states[0] for s in states) and states[0]["cursor"] == steps_before * 12
    second = mixture(sources, w2, m2)
    for loader in second:
        loader.load_state_dict(states[0])
    got += take(second, a2, 6)
    for step, (want, have) in enumerate(zip(expected, got, strict=True)):
        np.testing.assert_array_equal(have, want, err_msg=f"optimizer step {step}")
    assert second[0].windows_read().sum() == (steps_before + 6) * 12


@pytest.mark.parametrize("weight", [0, -0.5, float("nan"), float("inf"), "0.3", None])
def test_a_weight_that_is_not_a_positive_number_names_the_source(
    sources: list[MixtureSource], weight: object
) -> None:
    bad = [sources[0], dataclasses.replace(sources[1], weight=weight)]
    with pytest.raises(DatasetError, match=r"data\.mixture\.mid\.weight=.*expected a finite number > 0"):
        MixtureLoader(bad, LoaderSpec("train", SEQ, 2, 0))


def test_sources_with_different_tokenizers_are_refused_naming_both(
    sources: list[MixtureSource], tmp_path: Path, make_config: object
) -> None:
    corpus = _corpus(tmp_path / "txt", stdlib_files()[50:56])
    cfg = make_config(corpus, tmp_path / "other", num_workers=1)  # its own BPE, trained on its own text
    prepare_dataset(cfg)
    other = MixtureSource("other", cfg.dir, 0.5)
    with pytest.raises(DatasetError, match=r"data\.mixture\.other .* data\.mixture\.big .*one tokenizer"):
        MixtureLoader([sources[0], other], LoaderSpec("train", SEQ, 2, 0))


def test_a_missing_or_empty_source_is_refused_naming_it(
    sources: list[MixtureSource], tmp_path: Path, make_config: object
) -> None:
    missing = MixtureSource("gone", str(tmp_path / "nowhere"), 1.0)
    with pytest.raises(DatasetError, match=r"data\.mixture\.gone\.dir=.*nowhere' does not exist"):
        MixtureLoader([sources[0], missing], LoaderSpec("train", SEQ, 2, 0))
    (tmp_path / "txt").mkdir()
    for i in range(8):  # a few tokens per split: fewer than one window of SEQ + 1
        (tmp_path / "txt" / f"{i}.txt").write_text("x")
    cfg = make_config(tmp_path / "txt", tmp_path / "tiny", val_fraction=0.5, num_workers=1)
    cfg.tokenizer = TokenizerConfig(name="bpe", vocab_size=512, path=str(Path(sources[0].dir) / "tokenizer"))
    prepare_dataset(cfg)
    empty = MixtureSource("tiny", cfg.dir, 1.0)
    with pytest.raises(DatasetError, match=r"data\.mixture\.tiny .*too few for one sequence"):
        MixtureLoader([sources[0], empty], LoaderSpec("train", SEQ, 2, 0))
    with pytest.raises(DatasetError, match=r"data\.mixture is empty"):
        MixtureLoader([], LoaderSpec("train", SEQ, 2, 0))


def test_resume_refuses_a_single_dataset_state_other_weights_or_changed_data(
    sources: list[MixtureSource], tmp_path: Path
) -> None:
    loader = mixture(sources, 1, 4, prefetch=0)[0]
    single = TokenLoader(sources[0].dir, LoaderSpec("train", SEQ, 4, 3, prefetch=0)).state_dict()
    with pytest.raises(DatasetError, match="loader state is for one dataset"):
        loader.load_state_dict(single)
    reweighted = mixture([dataclasses.replace(sources[0], weight=0.9), *sources[1:]], 1, 4, prefetch=0)[0]
    with pytest.raises(DatasetError, match=r"checkpoint's mixture has .*\('big', 2458\)"):
        reweighted.load_state_dict(loader.state_dict())
    state = {**loader.state_dict(), "cursor": 40}
    saved = json.loads(state["mixture"])
    saved[1]["fingerprint"] = "0" * 64
    state["mixture"] = json.dumps(saved)
    with pytest.raises(DatasetError, match=r"sources \['mid'\] hold other data"):
        loader.load_state_dict(state)
    loader.load_state_dict(state, allow_fingerprint_mismatch=True)
    assert loader.cursor == 40


def test_validation_mixture_is_the_same_every_pass(sources: list[MixtureSource]) -> None:
    val = MixtureLoader(sources, LoaderSpec("val", SEQ, 4, 0, shuffle=False))
    first = take([val], 1, 3)
    val.reset()
    assert all(np.array_equal(a, b) for a, b in zip(first, take([val], 1, 3), strict=True))


def test_config_mixture_builds_a_mixture_loader_in_name_order(sources: list[MixtureSource]) -> None:
    from data.build import build_loader
    from data.config import MixtureSourceConfig

    cfg = DataConfig(mixture={s.name: MixtureSourceConfig(s.dir, s.weight) for s in reversed(sources)})
    loader = build_loader(cfg, LoaderSpec("train", SEQ, 4, 3, shuffle=True, pin_memory=False))
    direct = mixture(sources, 1, 4, prefetch=0)[0]
    assert isinstance(loader, MixtureLoader) and [s.name for s in loader.sources] == ["big", "mid", "small"]
    np.testing.assert_array_equal(loader.windows_at(0, 16), direct.windows_at(0, 16))
    loader.close()
    single = build_loader(
        DataConfig(dir=sources[0].dir), LoaderSpec("train", SEQ, 4, 3, shuffle=True, pin_memory=False)
    )
    assert isinstance(single, TokenLoader)
