"""`python -m infer.export_hf`: transformers loads the export without this project and computes its logits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data.tokenizer import load_bpe
from infer.export_hf import main as export_hf_main
from infer.export_hf import remote_code
from model import ModelConfig, Transformer
from train.export import save_weights, seal_export

REPO = Path(__file__).resolve().parents[2]
VARIANTS = {
    "baseline": dict(attention="baseline"),
    "diff_v1": dict(attention="diff_v1"),
    "diff_v2": dict(attention="diff_v2"),
    "diff_v2_moe": dict(attention="diff_v2", moe_experts=4, moe_top_k=2, moe_hidden=32),  # model/moe.py
}
TEXT = 'def main(argv):\n    s = "it\'s 1234567 café"\n\n\n    return  s.upper()  # ok?\n'

# Runs in a fresh interpreter whose sys.path has neither the repository nor the editable install's finder,
# in a working directory outside the repository: only torch and transformers are importable.
HF_SCRIPT = r"""
import importlib.util, json, sys
sys.path[:] = [p for p in sys.path if p not in ("", REPO)]
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
for name in ("model", "infer", "train", "data"):
    assert importlib.util.find_spec(name) is None, f"the project's {name} package is importable"
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

out = {}
for export in EXPORTS:
    model = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    generated = model.generate(ids[:, :6], max_new_tokens=8, do_sample=False)
    out[export] = {
        "ids": ids[0].tolist(),
        "logits": logits[0].tolist(),
        "generated": generated[0].tolist(),
        "decoded": tokenizer.decode(ids[0]),
        "module": type(model).__module__,
    }
with open(OUT, "w") as f:  # not stdout: AutoTokenizer's trust prompt prints there
    json.dump(out, f)
"""


@pytest.fixture(scope="module")
def exports(
    trained_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Transformer, Path]]:
    """Per variant: a randomly initialised model (saved as the project's export, with the run's tokenizer)
    and its Hugging Face export written by the command."""
    root = tmp_path_factory.mktemp("hf")
    vocab = load_bpe(trained_run / "tokenizer").n_vocab
    made = {}
    for seed, (variant, overrides) in enumerate(VARIANTS.items()):
        torch.manual_seed(seed)
        cfg = ModelConfig(
            vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_hidden=64,
            max_seq_len=64, **overrides,
        )  # fmt: skip
        model = Transformer(cfg).eval()
        src = root / variant
        save_weights(model.state_dict(), cfg, src)
        for name in ("tokenizer.tiktoken", "tokenizer.json"):
            shutil.copy(trained_run / name, src / name)
        seal_export(src)
        export_hf_main([str(src), str(root / f"{variant}-hf")])
        made[variant] = (model, root / f"{variant}-hf")
    return made


@pytest.mark.slow
def test_transformers_loads_the_export_without_the_project_with_the_same_logits(exports, tmp_path: Path):
    dirs = [str(path) for _, path in exports.values()]
    out = tmp_path / "hf.json"
    script = f"REPO = {str(REPO)!r}\nEXPORTS = {dirs!r}\nTEXT = {TEXT!r}\nOUT = {str(out)!r}\n" + HF_SCRIPT
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,  # outside the repository
        env=env,
        stdin=subprocess.DEVNULL,  # AutoTokenizer asks whether to trust the config's code; no answer is "no"
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    for variant, (model, export) in exports.items():
        got = results[str(export)]
        assert got["module"].startswith("transformers_modules."), got["module"]  # the export's own code
        enc = load_bpe(export.parent / variant / "tokenizer")
        assert got["ids"] == enc.encode_ordinary(TEXT), f"{variant}: the HF tokenizer splits differently"
        assert got["decoded"] == TEXT
        ids = torch.tensor([got["ids"]])
        with torch.no_grad():
            expected = model(ids)[0]
        torch.testing.assert_close(torch.tensor(got["logits"]), expected, rtol=0, atol=1e-5, msg=variant)
        greedy = model.generate(ids[:, :6], 8, temperature=0.0)[0].tolist()
        assert got["generated"] == greedy, variant


def test_remote_code_copies_the_model_files_unchanged():
    files = remote_code()
    expected = {"modeling_diffv2.py", "configuration_diffv2.py", "transformer.py", "variants.py"}
    assert expected | {
        "attention.py",
        "attention_diff_v1.py",
        "attention_diff_v2.py",
        "feed_forward.py",
    } <= set(files)
    for name, source in files.items():
        imports = [line for line in source.splitlines() if line.startswith(("from ", "import "))]
        assert not [line for line in imports if line.startswith(("from model", "from infer"))], name
    # Byte for byte the model/ modules (model/ imports itself relatively): no hand-kept second copy. A leaf
    # package below model/ (errors/) is the one absolute import, made relative.
    for name, source in files.items():
        original = REPO / "model" / name
        if original.is_file():
            assert source == original.read_text().replace("from errors import", "from .errors import"), name


def test_a_project_import_the_export_cannot_carry_is_refused(tmp_path: Path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "leaky.py").write_text("from data.tokenizer import EOT\n")
    (tmp_path / "model" / "absolute.py").write_text("import torch\nfrom model.rope import apply_rope\n")
    (tmp_path / "glue.py").write_text("from model.absolute import apply_rope\n")
    with pytest.raises(ValueError, match="leaky.py:1: 'from data"):
        remote_code(("model/leaky.py",), repo=tmp_path)
    # an entry module's `from model.x` is the export's to rewrite; a model/ module's own is refused
    with pytest.raises(ValueError, match=r"absolute.py:2: 'from model.rope import apply_rope'.*relatively"):
        remote_code(("glue.py",), repo=tmp_path)


def test_two_files_of_one_name_stop_the_export_naming_both(tmp_path: Path):
    (tmp_path / "glue").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "glue" / "modeling_diffv2.py").write_text("from model.transformer import Transformer\n")
    (tmp_path / "model" / "transformer.py").write_text("from .modeling_diffv2 import helper\n")
    (tmp_path / "model" / "modeling_diffv2.py").write_text("helper = 1\n")
    with pytest.raises(
        ValueError, match=r"model/modeling_diffv2.py and .*glue/modeling_diffv2.py would both be"
    ):
        remote_code(("glue/modeling_diffv2.py",), repo=tmp_path)


def test_an_export_whose_model_vocab_exceeds_the_tokenizers_suppresses_the_extra_ids(
    trained_run: Path, tmp_path
):
    enc = load_bpe(trained_run / "tokenizer")
    cfg = ModelConfig(
        vocab_size=enc.n_vocab + 64, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8,
        ffn_hidden=32, max_seq_len=16,
    )  # fmt: skip
    save_weights(Transformer(cfg).state_dict(), cfg, tmp_path / "src")
    for name in ("tokenizer.tiktoken", "tokenizer.json"):
        shutil.copy(trained_run / name, tmp_path / "src" / name)
    seal_export(tmp_path / "src")
    export_hf_main([str(tmp_path / "src"), str(tmp_path / "hf")])
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["suppress_tokens"] == list(range(enc.n_vocab, cfg.vocab_size))


def test_transformers_generate_obeys_the_exported_suppress_tokens(wide_vocab_export: Path, tmp_path: Path):
    """The ids beyond the tokenizer hold the largest logits of this model: greedy generation by transformers,
    with the generation_config.json the export wrote, never emits them (and does without it)."""
    from transformers import AutoModelForCausalLM

    enc = load_bpe(wide_vocab_export / "tokenizer")
    n_vocab = enc.n_vocab
    export_hf_main([str(wide_vocab_export), str(tmp_path / "hf")])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    prompt = torch.tensor([[enc.eot_token, *enc.encode_ordinary("def main(")]])  # as infer.sample starts
    start = prompt.shape[1]
    generated = model.generate(prompt, max_new_tokens=8, do_sample=False)[0, start:].tolist()
    assert generated and max(generated) < n_vocab, generated
    unsuppressed = model.generate(prompt, max_new_tokens=8, do_sample=False, suppress_tokens=None)[0, start:]
    assert max(unsuppressed.tolist()) >= n_vocab  # the test's model does favour the suppressed ids
