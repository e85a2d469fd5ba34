"""Downstream evaluation during training: local multiple-choice tasks (data/tasks.py) scored every
trainer.downstream_interval steps and at the end, logged beside the validation loss as
`downstream/<task>/acc` and `downstream/<task>/acc_norm`.

Scoring is lm-eval's loglikelihood multiple choice, with the scorer infer.evaluate's adapter uses
(model/scoring.py): per choice, log p(delimiter + choice | eot + context); acc takes the choice with the
highest log p, acc_norm the highest log p per character of the choice. Every rank runs the same forwards
(an FSDP model needs all of them); rank 0's logger writes. It holds no state of its own: it scores at steps
that are multiples of the interval, and the step comes back with a resumed checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from data.tasks import ChoiceTask, load_choice_task
from model.scoring import continuation_scores


class DownstreamEval:
    """The tasks of trainer.downstream_tasks, tokenized once."""

    def __init__(self, task_paths: list[str], encode, eot: int, batch_size: int = 8) -> None:
        self.tasks: list[ChoiceTask] = [load_choice_task(p) for p in task_paths]
        self.batch_size = batch_size
        self._requests: dict[str, list[tuple[list[int], int, int, int]]] = {}
        """task -> (sequence tokens, continuation length, choice length in chars, item index) per choice."""
        for task in self.tasks:
            requests = []
            for i, item in enumerate(task.items):
                context = [eot, *encode(item.context)]
                for choice in item.choices:
                    continuation = encode(task.delimiter + choice)
                    requests.append(([*context, *continuation], len(continuation), len(choice), i))
            self._requests[task.name] = requests

    @torch.no_grad()
    def scores(self, model: nn.Module) -> dict[str, float]:
        """{"downstream/<task>/acc": ..., "downstream/<task>/acc_norm": ...} of `model` (in eval mode)."""
        was_training = model.training
        model.eval()
        out: dict[str, float] = {}
        for task in self.tasks:
            requests = self._requests[task.name]
            logps: list[float] = []
            for start in range(0, len(requests), self.batch_size):
                chunk = requests[start : start + self.batch_size]
                scored = continuation_scores(model, [r[0] for r in chunk], [r[1] for r in chunk])
                logps += [logp for logp, _ in scored]
            per_item: dict[int, list[tuple[float, float]]] = {}  # item -> (log p, log p per char) per choice
            for (_, _, chars, item), logp in zip(requests, logps, strict=True):
                per_item.setdefault(item, []).append((logp, logp / max(chars, 1)))
            for j, metric in enumerate(("acc", "acc_norm")):
                right = [_argmax([c[j] for c in per_item[i]]) == it.answer for i, it in enumerate(task.items)]
                out[f"downstream/{task.name}/{metric}"] = sum(right) / len(right)
        model.train(was_training)
        return out


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)
