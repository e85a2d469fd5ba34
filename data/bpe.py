"""Trains a byte-level BPE with Hugging Face `tokenizers` and converts it to a tiktoken encoding.

HF's BPE trainer assigns ids in merge order (256 byte tokens first, then each merge's result), so its ids
are valid tiktoken ranks: tiktoken merges the adjacent pair whose result has the lowest rank, which replays
HF's merges in the same order. Both split text with the same regex first (tokenizer.SPLIT_PATTERN), except
that for training every run of letters, punctuation or whitespace is cut after 256 characters: HF's trainer
spends time proportional to a word's length for every merge it applies inside it, so one long run without
whitespace (1 MB of "a") made training quadratic. Text without such runs splits identically; encoding keeps
the unbounded pattern and simply applies the learned merges to longer runs.
"""

from __future__ import annotations

from collections.abc import Iterable

import tiktoken
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

from data.tokenizer import EOT, SPLIT_PATTERN

SPECIAL_TOKENS = (EOT,)
TRAIN_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}{1,256}|\p{N}{1,3}"""
    r"""| ?[^\s\p{L}\p{N}]{1,256}[\r\n]{0,256}|\s{0,256}[\r\n]{1,256}|\s{1,256}(?!\S)|\s{1,256}"""
)
"""SPLIT_PATTERN with each unbounded run (`+`, `*`) bounded by 256 characters; no run in the stdlib corpus
is longer, so the default tokenizer is the one the unbounded pattern trains."""
MIN_VOCAB = 256 + len(SPECIAL_TOKENS) + 1


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's map from the printable stand-in character HF uses for each byte back to the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(char): byte for byte, char in zip(printable, chars, strict=True)}


def hf_bpe_tokenizer(split_pattern: str = TRAIN_SPLIT_PATTERN) -> Tokenizer:
    """An untrained HF byte-level BPE that splits text like the tiktoken encoding it will become (runs longer
    than 256 characters aside, with the default training pattern)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return tok


def train_hf_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """HF's trainer on `texts`; `vocab_size` counts the special tokens added afterwards."""
    if vocab_size < MIN_VOCAB:
        raise ValueError(
            f"tokenizer.vocab_size={vocab_size} is too small; a byte-level BPE needs >= {MIN_VOCAB}"
        )
    tok = hf_bpe_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def to_tiktoken(tok: Tokenizer, name: str = "bpe") -> tiktoken.Encoding:
    """The tiktoken encoding with HF's ids as ranks and the special tokens after them."""
    alphabet = byte_level_alphabet()
    ranks = {bytes(alphabet[ch] for ch in token): rank for token, rank in tok.get_vocab().items()}
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError("HF vocabulary ids are not 0..n-1; cannot use them as tiktoken ranks")
    specials = {token: len(ranks) + i for i, token in enumerate(SPECIAL_TOKENS)}
    return tiktoken.Encoding(name=name, pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


def train_bpe(texts: Iterable[str], vocab_size: int) -> tiktoken.Encoding:
    """A byte-level BPE of exactly `vocab_size` tokens (merges plus <|endoftext|>) trained on `texts`.

    A corpus too small to reach `vocab_size` merges is an error: the embedding is sized from the config.
    """
    enc = to_tiktoken(train_hf_bpe(texts, vocab_size))
    if enc.n_vocab != vocab_size:
        raise ValueError(
            f"the BPE trainer stopped at {enc.n_vocab} tokens, fewer than tokenizer.vocab_size={vocab_size}: "
            "the training text is too small (raise tokenizer.train_bytes or lower the vocab size)"
        )
    return enc
