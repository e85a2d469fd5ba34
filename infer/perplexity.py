"""`python -m infer.perplexity SOURCE FILE [FILE ...]`: bits per token and bits per byte of text files.

The text of each file is one document: it is scored after <|endoftext|> (the separator the model saw before
every document in training), so every token of the file is predicted and the bits per byte count every
UTF-8 byte of it. Bits per byte compare models with different tokenizers; bits per token and perplexity
(2 ** bits per token) only models that share one.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import errors
from errors import ConfigError
from infer.load import Loaded, add_source_arguments, load_from_args, read_input_text
from model.scoring import token_logprobs


@dataclass
class Perplexity:
    tokens: int
    """Tokens scored (the text's tokens; the leading <|endoftext|> is context only)."""
    bytes: int
    """UTF-8 bytes of the text."""
    nll_nats: float
    """Summed negative log-likelihood, in nats."""
    bits_per_token: float
    bits_per_byte: float
    perplexity: float
    """Per token: 2 ** bits_per_token."""


def perplexity(loaded: Loaded, texts: list[str], stride: int | None = None) -> Perplexity:
    """The scores of `texts` together (each text its own document), windows of the model's max_seq_len."""
    tokenizer, nll, n_tokens, n_bytes = loaded.tokenizer, 0.0, 0, 0
    for text in texts:
        tokens = tokenizer.encode_ordinary(text)
        nll -= token_logprobs(loaded.model, tokens, tokenizer.eot_token, stride).double().sum().item()
        n_tokens += len(tokens)
        n_bytes += len(text.encode("utf-8"))
    if n_tokens == 0:
        raise ConfigError("no text to score: the files are empty")
    bits = nll / math.log(2)
    return Perplexity(n_tokens, n_bytes, nll, bits / n_tokens, bits / n_bytes, 2 ** (bits / n_tokens))


@errors.reports_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m infer.perplexity", description=__doc__)
    add_source_arguments(parser)
    parser.add_argument("files", type=Path, nargs="+", help="UTF-8 text files, each one document")
    parser.add_argument(
        "--stride", type=int, default=None, help="new tokens per window (default: max_seq_len, disjoint)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    texts = [read_input_text(file, "FILE") for file in args.files]
    result = perplexity(load_from_args(args), texts, args.stride)
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(
            f"{result.tokens} tokens, {result.bytes} bytes: {result.bits_per_token:.4f} bits/token, "
            f"{result.bits_per_byte:.4f} bits/byte, perplexity {result.perplexity:.2f}"
        )


if __name__ == "__main__":
    main()
