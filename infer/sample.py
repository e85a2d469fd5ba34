"""`python -m infer.sample SOURCE --prompt TEXT`: continuations from the model's KV-cache `generate`.

SOURCE is a run dir, a checkpoint dir or an export dir. Prompts come from --prompt (repeatable) or
--prompts-file (one prompt per line; `\\n` inside a line stands for a newline; empty lines are skipped, a
line of only spaces or tabs is refused naming it, since it is more likely a mistake than a prompt). Greedy
with --temperature 0; else a seeded sample with optional --top-k / --top-p. A continuation stops at
<|endoftext|> (the document separator the model was trained with) unless --keep-eot.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import errors
from errors import ConfigError
from infer.load import Loaded, add_source_arguments, load_from_args, read_input_text

DEFAULT_NEW_TOKENS = 64


def _encode(loaded: Loaded, prompt: str) -> list[int]:
    # A prompt starts a document: the model saw <|endoftext|> before every document in training.
    return [loaded.tokenizer.eot_token, *loaded.tokenizer.encode_ordinary(prompt)]


def complete(
    loaded: Loaded,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    keep_eot: bool = False,
) -> list[str]:
    """The continuation of each prompt; prompts of equal token length decode together in one batch."""
    encoded = [_encode(loaded, p) for p in prompts]
    limit = loaded.cfg.max_seq_len
    for prompt, tokens in zip(prompts, encoded, strict=True):
        if len(tokens) + max_new_tokens > limit:
            raise ConfigError(
                f"prompt {prompt[:40]!r}... is {len(tokens)} tokens (with the leading <|endoftext|>); with "
                f"max_new_tokens={max_new_tokens} that exceeds the model's max_seq_len={limit}: shorten the "
                "prompt or lower --max-new-tokens"
            )
    generator = torch.Generator(device=loaded.device).manual_seed(seed)
    by_length: dict[int, list[int]] = {}
    for i, tokens in enumerate(encoded):
        by_length.setdefault(len(tokens), []).append(i)
    outputs: list[str] = [""] * len(prompts)
    for length, indices in by_length.items():
        batch = torch.tensor([encoded[i] for i in indices], device=loaded.device)
        out = loaded.model.generate(
            batch, max_new_tokens, temperature, top_k, generator, top_p, vocab_limit=loaded.tokenizer.n_vocab
        )
        for i, row in zip(indices, out[:, length:].tolist(), strict=True):
            eot = loaded.tokenizer.eot_token
            if not keep_eot and eot in row:
                row = row[: row.index(eot)]
            outputs[i] = loaded.tokenizer.decode(row)
    return outputs


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of tokens")
    return value


def _prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts_file is not None:
        lines = read_input_text(args.prompts_file, "--prompts-file").splitlines()
        for number, line in enumerate(lines, start=1):
            if line and not line.strip():
                raise ConfigError(
                    f"--prompts-file {args.prompts_file} line {number} holds only whitespace: remove it, "
                    "or write the prompt (`\\n` stands for a newline)"
                )
        prompts += [line.replace("\\n", "\n") for line in lines if line]
    if not prompts:
        raise ConfigError("no prompt: pass --prompt TEXT (repeatable) or --prompts-file FILE")
    return prompts


@errors.reports_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m infer.sample", description=__doc__)
    add_source_arguments(parser)
    parser.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    parser.add_argument("--prompts-file", type=Path, help="one prompt per line")
    parser.add_argument(
        "--max-new-tokens",
        type=_positive,
        default=None,
        help="default: 64, or fewer to fit the model's max_seq_len",
    )
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-eot", action="store_true", help="do not stop at <|endoftext|>")
    parser.add_argument("--json", action="store_true", help="print one JSON line per prompt")
    args = parser.parse_args(argv)
    prompts = _prompts(args)
    loaded = load_from_args(args)
    if args.max_new_tokens is None:
        longest = max(len(_encode(loaded, p)) for p in prompts)
        args.max_new_tokens = max(1, min(DEFAULT_NEW_TOKENS, loaded.cfg.max_seq_len - longest))
    try:
        outputs = complete(
            loaded,
            prompts,
            args.max_new_tokens,
            args.temperature,
            args.top_k,
            args.top_p,
            args.seed,
            args.keep_eot,
        )
    except ValueError as err:  # generate's checks of --temperature, --top-k, --top-p
        raise ConfigError(str(err)) from None
    for prompt, output in zip(prompts, outputs, strict=True):
        if args.json:
            print(json.dumps({"prompt": prompt, "completion": output}))
        else:
            print(prompt + output, end="\n\n" if len(prompts) > 1 else "\n")


if __name__ == "__main__":
    main()
