"""The README's Python examples run as written, so the documentation cannot drift from the API."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from data.config import DataConfig, SourceConfig, TokenizerConfig
from data.prepare import prepare_dataset

README = Path(__file__).resolve().parent.parent / "README.md"
README_DATASET = ".cache/data/stdlib-bpe8192"  # the default run's dataset, which the data example reads


def python_examples() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def example_using(name: str) -> str:
    (found,) = [
        code for code in python_examples() if re.search(rf"^(from \S+ )?import .*\b{name}\b", code, re.M)
    ]
    return found


def test_readme_has_the_model_and_data_examples():
    assert len(python_examples()) >= 2


def test_model_example_runs(capsys: pytest.CaptureFixture[str]):
    exec(compile(example_using("ModelConfig, Transformer"), "README.md", "exec"), {})
    printed = capsys.readouterr().out.split()
    params, flops, lambda_mean = (float(x) for x in printed[:3])
    embedding = 8192 * 256  # a gather, not a matmul: the one weight without FLOPs
    assert params > 1_000_000 and flops > 6 * (params - embedding)
    assert 0.0 < lambda_mean < 1.0  # sigmoid(lambda) per token and head


def test_data_example_runs(tmp_path: Path):
    dataset = tmp_path / "ds"
    prepare_dataset(
        DataConfig(
            name="readme",
            dir=str(dataset),
            source=SourceConfig(kind="stdlib", max_docs=40),
            tokenizer=TokenizerConfig(name="bpe", vocab_size=512, path=str(dataset / "tokenizer")),
            shard_tokens=50_000,
            val_fraction=0.05,
            num_workers=1,
        )
    )
    code = example_using("TokenLoader")
    assert README_DATASET in code
    scope: dict[str, object] = {}
    exec(compile(code.replace(README_DATASET, str(dataset)), "README.md", "exec"), scope)
    scope["train"].close()  # the example's loader prefetches in a thread
    assert tuple(scope["inputs"].shape) == (16, 256) and tuple(scope["targets"].shape) == (16, 256)
    assert scope["state"]  # a resumable cursor, not an empty dict
