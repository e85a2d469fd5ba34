"""`python -m infer.export_hf SOURCE OUT_DIR`: a Hugging Face directory for `trust_remote_code=True`.

    AutoModelForCausalLM.from_pretrained(OUT_DIR, trust_remote_code=True)   # torch + transformers only
    AutoTokenizer.from_pretrained(OUT_DIR)                                  # a plain fast tokenizer

OUT_DIR holds config.json (auto_map to the remote code), model.safetensors, generation_config.json, the
tokenizer (tokenizer.json + tokenizer_config.json, converted from the run's tiktoken encoding, same ids) and
the remote code: infer/hf_remote/*.py and every model/ module they import, copied from this checkout with
their project imports made relative. The model code is generated from model/ at export time: there is no
second copy to keep in step.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

import tiktoken

import errors
from infer.load import Loaded, add_source_arguments, load_from_args

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

REPO = Path(__file__).resolve().parents[1]
ENTRY_MODULES = ("infer.hf_remote.configuration_diffv2", "infer.hf_remote.modeling_diffv2")
PROJECT_IMPORT = re.compile(r"^(\s*)from (model|infer\.hf_remote)\.(\w+) import ", re.MULTILINE)
ANY_PROJECT_IMPORT = re.compile(r"^\s*(from|import) (model|data|train|infer|launch|bench)\b", re.MULTILINE)
AUTO_MAP = {
    "AutoConfig": "configuration_diffv2.DiffV2Config",
    "AutoModelForCausalLM": "modeling_diffv2.DiffV2ForCausalLM",
}


def _module_file(module: str) -> Path:
    return REPO.joinpath(*module.split(".")).with_suffix(".py")


def remote_code(entries: tuple[str, ...] = ENTRY_MODULES) -> dict[str, str]:
    """File name -> source of the entry modules and, transitively, every project module they import, with
    `from model.x import` / `from infer.hf_remote.x import` rewritten to `from .x import`."""
    files: dict[str, str] = {}
    todo = list(entries)
    while todo:
        module = todo.pop()
        name = module.rsplit(".", 1)[-1] + ".py"
        if name in files:
            continue
        source = _module_file(module).read_text()
        todo += [f"{m.group(2)}.{m.group(3)}" for m in PROJECT_IMPORT.finditer(source)]
        rewritten = PROJECT_IMPORT.sub(r"\1from .\3 import ", source)
        leftover = ANY_PROJECT_IMPORT.search(rewritten)
        if leftover:
            raise ValueError(
                f"{_module_file(module)}: {leftover.group(0).strip()!r} is a project import the Hugging Face "
                "export cannot carry; import from model/ with `from model.<module> import ...`"
            )
        files[name] = rewritten
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
