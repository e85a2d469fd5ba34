"""Local multiple-choice tasks in lm-eval's YAML + JSONL format (tests/infer/tasks/python_mc.yaml), read
without lm-eval: the trainer scores them during training, where lm-eval is no dependency.

The subset understood: `task`, `dataset_kwargs.data_files.test` (a JSONL path, relative to the working
directory as lm-eval reads it), `output_type: multiple_choice`, `doc_to_text`, `doc_to_choice` and
`doc_to_target` each a single `{{field}}` of the JSON line, and `target_delimiter` (default " "). Anything
else (a Hub dataset, a Jinja expression) is refused naming the key: score such tasks with infer.evaluate.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from errors import ConfigError

FIELD = re.compile(r"^\{\{\s*(\w+)\s*\}\}$")


@dataclass(frozen=True)
class ChoiceItem:
    context: str
    choices: list[str]
    answer: int
    """Index of the right choice."""


@dataclass(frozen=True)
class ChoiceTask:
    name: str
    items: list[ChoiceItem]
    delimiter: str
    """Put between the context and each choice (lm-eval's target_delimiter)."""


def _field(spec: dict, key: str, path: Path) -> str:
    match = FIELD.match(str(spec.get(key, "")))
    if match is None:
        raise ConfigError(f"{path}: {key}={spec.get(key)!r} must be one JSON field as '{{{{name}}}}'")
    return match.group(1)


def load_choice_task(path: str | Path) -> ChoiceTask:
    """The task a YAML file defines, with its items read from its JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such task file (a YAML like tests/infer/tasks/python_mc.yaml)")
    spec = yaml.safe_load(path.read_text()) or {}
    if spec.get("output_type") != "multiple_choice":
        kind = spec.get("output_type")
        raise ConfigError(f"{path}: output_type={kind!r}; only multiple_choice is scored during training")
    try:
        data = Path(spec["dataset_kwargs"]["data_files"]["test"])
    except (KeyError, TypeError):
        raise ConfigError(f"{path}: dataset_kwargs.data_files.test must name a local JSONL file") from None
    text, choices, target = (_field(spec, k, path) for k in ("doc_to_text", "doc_to_choice", "doc_to_target"))
    if not data.is_file():
        raise ConfigError(f"{path}: dataset_kwargs.data_files.test={data} does not exist (from {Path.cwd()})")
    items = []
    for n, line in enumerate(data.read_text().splitlines(), 1):
        if line.strip():
            doc = json.loads(line)
            item = ChoiceItem(str(doc[text]), [str(c) for c in doc[choices]], int(doc[target]))
            if not 0 <= item.answer < len(item.choices):
                raise ConfigError(f"{data}:{n}: {target}={item.answer} is not an index into {choices}")
            items.append(item)
    return ChoiceTask(str(spec.get("task", path.stem)), items, str(spec.get("target_delimiter", " ")))
