"""`python -m infer.export_hf SOURCE OUT_DIR`: a Hugging Face directory for `trust_remote_code=True`.

    AutoModelForCausalLM.from_pretrained(OUT_DIR, trust_remote_code=True)   # torch + transformers only
    AutoTokenizer.from_pretrained(OUT_DIR)                                  # a plain fast tokenizer

OUT_DIR holds config.json (auto_map to the remote code), model.safetensors, generation_config.json, the
tokenizer (tokenizer.json + tokenizer_config.json, converted from the run's tiktoken encoding, same ids) and
the remote code: infer/hf_remote/*.py and every model/ module they reach, the model/ files copied unchanged
(model/ imports itself relatively). The model code is taken from model/ at export time: there is no second
copy to keep in step.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import TYPE_CHECKING

import tiktoken

import errors
from infer.load import Loaded, add_source_arguments, load_from_args

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

REPO = Path(__file__).resolve().parents[1]
ENTRY_MODULES = ("infer/hf_remote/configuration_diffv2.py", "infer/hf_remote/modeling_diffv2.py")
"""The export's own glue, beside the model files: their `from model.<m> import` lines become `from .<m>`."""
LEAF_PACKAGES = {"errors": "errors/__init__.py"}
"""Project packages below model/ (they import nothing of the project), shipped as one file each; an
absolute `from errors import` becomes `from .errors import` (the export is one flat package)."""
PROJECT_PACKAGES = ("model", "data", "train", "infer", "launch", "bench", "conf", "analysis", "errors")
AUTO_MAP = {
    "AutoConfig": "configuration_diffv2.DiffV2Config",
    "AutoModelForCausalLM": "modeling_diffv2.DiffV2ForCausalLM",
}


class ExportError(ValueError):
    """The remote code cannot be assembled: a name clash or an import the export cannot carry."""


def _dependencies(path: Path, source: str, entry: bool, repo: Path) -> tuple[list[Path], dict[int, str]]:
    """The project files `path` imports, and the lines (by number) whose import the export makes relative.

    Relative imports (`from .x import`) resolve beside the file; an entry module's `from model.x import`
    resolves to model/x.py; a leaf package's absolute import to its one file. Any other project import,
    and `from . import x` (transformers' loader does not follow it), stops the export naming the line."""
    needed: list[Path] = []
    rewrites: dict[int, str] = {}
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            module, level = node.module or "", node.level
        elif isinstance(node, ast.Import):
            module, level = node.names[0].name, 0
        else:
            continue
        top = module.split(".")[0]
        if level == 1 and module:
            needed.append(path.with_name(f"{module}.py"))
        elif isinstance(node, ast.ImportFrom) and not level and top in LEAF_PACKAGES and module == top:
            needed.append(repo / LEAF_PACKAGES[top])
            rewrites[node.lineno] = module
        elif entry and isinstance(node, ast.ImportFrom) and not level and top == "model" and "." in module:
            needed.append(repo.joinpath(*module.split(".")).with_suffix(".py"))
            rewrites[node.lineno] = module
        elif level or top in PROJECT_PACKAGES:
            raise ExportError(
                f"{path}:{node.lineno}: {lines[node.lineno - 1].strip()!r} is an import the Hugging Face "
                "export cannot carry: model/ imports its own modules relatively (`from .<module> import`) "
                "and no other project package but errors"
            )
    return needed, rewrites


def _made_relative(source: str, rewrites: dict[int, str]) -> str:
    """`from a.b import` -> `from .b import` on the given lines (the export is one flat package)."""
    lines = source.splitlines(keepends=True)
    for lineno, module in rewrites.items():
        relative = f"from .{module.rsplit('.', 1)[-1]} import"
        lines[lineno - 1] = lines[lineno - 1].replace(f"from {module} import", relative, 1)
    return "".join(lines)


def remote_code(entries: tuple[str, ...] = ENTRY_MODULES, repo: Path = REPO) -> dict[str, str]:
    """File name -> source of the export's remote code: the entry modules and every project file they reach
    through imports. model/ files are copied unchanged (model/ imports itself relatively); only the entry
    modules' `from model.x` and a leaf package's absolute import become relative. Two files of one name from
    different places stop the export (the export is flat)."""
    files: dict[str, str] = {}
    origin: dict[str, Path] = {}
    entry_paths = [repo / entry for entry in entries]
    todo = list(entry_paths)
    while todo:
        path = todo.pop()
        name = f"{path.parent.name}.py" if path.name == "__init__.py" else path.name
        if name in origin:
            if origin[name] != path:
                raise ExportError(
                    f"{path} and {origin[name]} would both be {name} in the Hugging Face export: rename one"
                )
            continue
        if not path.is_file():
            raise ExportError(f"{path}: imported by the Hugging Face export's code but missing")
        source = path.read_text()
        needed, rewrites = _dependencies(path, source, path in entry_paths, repo)
        origin[name] = path
        files[name] = _made_relative(source, rewrites)
        todo += needed
    return files


def hf_tokenizer(enc: tiktoken.Encoding, max_len: int) -> PreTrainedTokenizerFast:
    """A transformers fast tokenizer with the encoding's split pattern, merges and ids (specials too)."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers import Regex as HfRegex
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class RanksConverter(TikTokenConverter):
        """transformers' tiktoken -> BPE merges conversion, fed the ranks in memory instead of a file."""

        def load_tiktoken_bpe(self, tiktoken_url: str) -> dict[bytes, int]:
            return enc._mergeable_ranks

    vocab, merges = RanksConverter().extract_vocab_merges_from_model("")
    vocab.update(enc._special_tokens)  # in the vocab with tiktoken's ids, so add_special_tokens keeps them
    tok = Tokenizer(BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(HfRegex(enc._pat_str), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in enc._special_tokens])
    for token, rank in enc._special_tokens.items():
        if tok.token_to_id(token) != rank:
            raise ValueError(
                f"special token {token!r}: id {tok.token_to_id(token)} in the HF tokenizer, "
                f"{rank} in tiktoken"
            )
    eot = "<|endoftext|>"
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=eot, eos_token=eot, pad_token=eot, model_max_length=max_len
    )


def export_hf(loaded: Loaded, out_dir: Path) -> Path:
    """Writes the Hugging Face directory for `loaded` (see the module docstring); returns out_dir."""
    from infer.hf_remote.configuration_diffv2 import DiffV2Config
    from infer.hf_remote.modeling_diffv2 import DiffV2ForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    eot = loaded.tokenizer.eot_token
    config = DiffV2Config.from_model_config(loaded.cfg, eot)
    config.auto_map = AUTO_MAP
    config.architectures = ["DiffV2ForCausalLM"]
    hf_model = DiffV2ForCausalLM(config)
    hf_model.model.load_state_dict(loaded.model.state_dict())
    hf_model.generation_config.use_cache = False
    if (
        loaded.tokenizer.n_vocab < loaded.cfg.vocab_size
    ):  # rows the tokenizer lacks: generate never emits them
        beyond = range(loaded.tokenizer.n_vocab, loaded.cfg.vocab_size)
        hf_model.generation_config.suppress_tokens = list(beyond)
    hf_model.save_pretrained(out_dir)
    for name, source in remote_code().items():
        (out_dir / name).write_text(source)
    hf_tokenizer(loaded.tokenizer, loaded.cfg.max_seq_len).save_pretrained(out_dir)
    return out_dir


@errors.reports_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m infer.export_hf", description=__doc__)
    add_source_arguments(parser)
    parser.add_argument("out_dir", type=Path, help="the Hugging Face directory to write")
    args = parser.parse_args(argv)
    out = export_hf(load_from_args(args), args.out_dir)
    print(f"exported {out}: AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)")


if __name__ == "__main__":
    main()
