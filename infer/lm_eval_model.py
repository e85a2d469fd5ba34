"""The project's model as an lm-evaluation-harness `LM` (TemplateLM): loglikelihood, rolling, generate_until.

Every request is scored as the start of a document, after <|endoftext|> (what the model saw before each
document in training), through model/scoring.py, the same scorer as `python -m infer.perplexity`.
Registered with lm-eval as "diffv2": `simple_evaluate(model="diffv2", model_args="source=runs/x")` once this
module is imported; `python -m infer.evaluate` is the command.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from infer.load import Loaded, load
from model.scoring import continuation_scores, token_logprobs


@register_model("diffv2")
class DiffV2LM(TemplateLM):
    def __init__(
        self,
        source: str | Path | Loaded,
        batch_size: int | str = 8,
        device: str = "cpu",
        max_gen_toks: int = 256,
        seed: int = 0,
    ) -> None:
        """source: a run, checkpoint or export dir (or an already loaded model). max_gen_toks: the default
        generation length of generate_until tasks that set none."""
        super().__init__()
        self.loaded = source if isinstance(source, Loaded) else load(source, device)
        self.model = self.loaded.model
        self.enc = self.loaded.tokenizer
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.generator = torch.Generator(device=self.loaded.device).manual_seed(int(seed))

    @property
    def eot_token_id(self) -> int:
        return self.enc.eot_token

    @property
    def max_length(self) -> int:
        return self.loaded.cfg.max_seq_len

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: object) -> list[int]:
        # Plain text only: a literal "<|endoftext|>" in a task's text is text, as in training data.
        return self.enc.encode_ordinary(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.enc.decode(tokens)

    def _document(self, context: list[int]) -> list[int]:
        """The context as the start of a document: one <|endoftext|> in front (TemplateLM may have put it)."""
        return context if context[:1] == [self.eot_token_id] else [self.eot_token_id, *context]

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str], list[int], list[int]]], disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        results: list[tuple[float, bool]] = []
        for i in range(0, len(requests), self.batch_size):
            chunk = requests[i : i + self.batch_size]
            sequences = [self._document(ctx) + cont for _, ctx, cont in chunk]
            scores = continuation_scores(self.model, sequences, [len(cont) for _, _, cont in chunk])
            for (pair, _, _), score in zip(chunk, scores, strict=True):
                self.cache_hook.add_partial("loglikelihood", pair, score)
            results += scores
        return results

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        results = []
        for request in requests:
            (text,) = request.args
            logprobs = token_logprobs(
                self.model, self.tok_encode(text), self.eot_token_id, None, self.batch_size
            )
            results.append(logprobs.double().sum().item())
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), results[-1])
        return results

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        results = []
        for request in requests:
            context, gen_kwargs = request.args
            gen_kwargs = dict(gen_kwargs)
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            do_sample = bool(gen_kwargs.pop("do_sample", False))
            temperature = float(gen_kwargs.pop("temperature", 1.0)) if do_sample else 0.0
            max_new = min(max_new, self.max_length - 1)
            tokens = self._document(self.tok_encode(context))[-(self.max_length - max_new) :]
            prompt = torch.tensor([tokens], device=self.loaded.device)
            out = self.model.generate(
                prompt,
                max_new,
                temperature,
                gen_kwargs.pop("top_k", None),
                self.generator,
                gen_kwargs.pop("top_p", None),
                vocab_limit=self.enc.n_vocab,  # the model's vocabulary may have rows the tokenizer lacks
            )[0, len(tokens) :].tolist()
            if self.eot_token_id in out:
                out = out[: out.index(self.eot_token_id)]
            text = self.tok_decode(out)
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            results.append(text)
            self.cache_hook.add_partial("generate_until", request.args, text)
        return results
