"""One source of truth for config: the schema's defaults are the default run, and a preset states only what
differs from them, so a default changed in the dataclass cannot be silently overridden by a stale YAML."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conf import CONF_DIR, RunConfig, UnknownConfigKey, compose, compose_run_config

PRESET_GROUPS = ("attention", "data", "launch", "logging", "model", "optim", "parallel")
SHAPE = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_hidden")
SHAPE += ("max_seq_len",)
SHAPE_KEYS = {f"model.{k}" for k in SHAPE}
"""A size preset names a whole shape: it must not move when the schema's (tiny) defaults do."""


def _schema_defaults() -> dict:
    return OmegaConf.to_container(OmegaConf.structured(RunConfig), enum_to_str=True)  # type: ignore[return-value]


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _package(path: Path) -> str:
    """The `# @package` a preset declares: its keys live under that prefix (_global_: at the top)."""
    first = path.read_text().splitlines()[0]
    assert first.startswith("# @package "), f"{path}: no '# @package' header"
    package = first.removeprefix("# @package ").strip()
    return "" if package == "_global_" else f"{package}."


def test_composing_the_default_config_gives_the_schemas_defaults():
    composed = OmegaConf.to_container(compose(), enum_to_str=True)
    assert composed == _schema_defaults()


@pytest.mark.parametrize(
    "preset",
    sorted(p.relative_to(CONF_DIR).as_posix() for g in PRESET_GROUPS for p in (CONF_DIR / g).glob("*.yaml")),
)
def test_a_preset_states_only_what_differs_from_the_schema(preset: str):
    path = CONF_DIR / preset
    defaults = _leaves(_schema_defaults())
    values = _leaves(OmegaConf.to_container(OmegaConf.load(path)) or {}, _package(path))  # type: ignore[arg-type]
    # A dict field (e.g. data.mixture: name -> source) takes keys of the preset's choosing.
    free = tuple(f"{key}." for key, value in defaults.items() if value == {})
    values = {k: v for k, v in values.items() if not k.startswith(free)}
    unknown = sorted(set(values) - set(defaults))
    assert not unknown, f"{preset}: keys the schema does not have: {unknown}"
    repeated = {k: v for k, v in values.items() if k in defaults and defaults[k] == v and k not in SHAPE_KEYS}
    assert not repeated, f"{preset} repeats the schema's defaults (drop them): {repeated}"


def test_the_config_layer_and_the_launcher_load_without_torch():
    # The launcher and data.prepare compose the whole config; importing torch there costs seconds for nothing.
    code = "import sys, conf, launch.app, train.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_a_misspelt_key_added_inside_a_mapping_of_sections_is_refused_naming_it():
    with pytest.raises(UnknownConfigKey, match=r"data\.mixture\.stdlib\.wieght is not a config key"):
        compose_run_config(["data=mixture", "+data.mixture.stdlib.wieght=0.5"])
