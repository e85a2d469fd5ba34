"""DIFF diagnostics: the quantities the blog's claims are about, read with forward hooks during a forward.

    with DiagnosticsRecorder(model) as rec:
        model(tokens)
    rec.summary()  # {"diag/lambda_mean/L0": ..., "diag/act_max/max": ..., ...}

Per layer i (keys end in /L{i}):
- lambda_mean, lambda_std: DIFF V2's effective lambda per token and head (sigmoid(x W_lambda), or the raw
  projection for lambda_mode=linear); DIFF V1's scalar lambda (std 0). Absent for baseline and lambda none.
- act_max: max |activation| of the block's output (the residual stream).
- context_rms, context_rms_min, context_rms_max: RMS over the head width of each head's attention output
  before o_proj, averaged over tokens; the layer's mean over heads and its min / max over heads.
- qk_logit_max: the largest scaled logit q.k / sqrt(d) over causal query-key pairs and all query heads.
- sink_mass: attention probability on the first token, averaged over query positions >= 1 and over every
  softmax map (DIFF V2's 2h maps, V1's sub-head maps).
Overall: act_max/max, qk_logit_max/max, context_rms/mean, sink_mass/mean, lambda_mean/mean.

Only module hooks are used, so this works when every block is wrapped by FSDP2 (parameters are unsharded
inside the block's forward, where the hooks run). The qk statistics recompute the attention maps explicitly,
one head at a time, on the first `max_batch` sequences only. Values stay tensors until summary(), so the
hooks add no device synchronisation.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import nn

from model.transformer import TransformerBlock


class DiagnosticsRecorder:
    """Context manager recording per-layer statistics of every forward run inside it."""

    def __init__(self, model: nn.Module, max_batch: int = 1) -> None:
        self.blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
        if not self.blocks:
            raise ValueError(f"{type(model).__name__} holds no TransformerBlock to record")
        self.max_batch = max_batch
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._records: dict[str, list[torch.Tensor]] = defaultdict(list)

    def __enter__(self) -> DiagnosticsRecorder:
        for block in self.blocks:
            i = block.layer_idx
            self._handles.append(block.register_forward_hook(self._block_hook(i)))
            self._handles.append(block.attention.register_forward_hook(self._attention_hook(i)))
            attn = block.attention
            self._handles.append(attn.o_proj.register_forward_pre_hook(self._context_hook(i, attn)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _block_hook(self, i: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self._records[f"act_max/L{i}"].append(output.detach().abs().amax().float())

        return hook

    def _context_hook(self, i: int, attn: nn.Module):
        def hook(o_proj: nn.Module, args: tuple) -> None:
            x = args[0].detach().float().unflatten(-1, (attn.n_out_heads, attn.out_head_dim))
            per_head = x.pow(2).mean(-1).sqrt().flatten(0, -2).mean(0)  # [heads]
            self._records[f"context_rms/L{i}"].append(per_head)

        return hook

    def _attention_hook(self, i: int):
        def hook(attn: nn.Module, args: tuple, output: torch.Tensor) -> None:
            x, rel_pos = args[0], args[1]
            cache = args[2] if len(args) > 2 else None
            with torch.no_grad():
                lam = attn.lambda_values(x)
                if lam is not None:
                    lam = lam.detach().float()
                    self._records[f"lambda_mean/L{i}"].append(lam.mean())
                    self._records[f"lambda_std/L{i}"].append(lam.std(correction=0))
                if cache is None and x.shape[1] > 1:  # decoding steps have their keys in the cache
                    qk_max, sink = self._qk_stats(attn, x[: self.max_batch], rel_pos)
                    self._records[f"qk_logit_max/L{i}"].append(qk_max)
                    self._records[f"sink_mass/L{i}"].append(sink)

        return hook

    @staticmethod
    def _qk_stats(attn: nn.Module, x: torch.Tensor, rel_pos) -> tuple[torch.Tensor, torch.Tensor]:
        q, k = attn.rotated_qk(x, rel_pos)  # [B, N, Hq, d] each, k already per query head
        n, d = q.shape[1], q.shape[-1]
        causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        maxima, sinks = [], []
        for head in range(q.shape[2]):  # one [B, N, N] map at a time keeps memory at B * N^2
            logits = q[:, :, head].float() @ k[:, :, head].float().transpose(1, 2) / math.sqrt(d)
            logits = logits.masked_fill(~causal, float("-inf"))
            maxima.append(logits.amax())
            sinks.append(torch.softmax(logits, dim=-1)[:, 1:, 0].mean())
        return torch.stack(maxima).amax(), torch.stack(sinks).mean()

    def summary(self) -> dict[str, float]:
        """Flat `diag/<stat>/L<i>` floats plus overall maxima / means; maxima over forwards for the max
        statistics, means over forwards for the others."""
        out: dict[str, float] = {}
        for key, values in self._records.items():
            stat, layer = key.split("/")
            if stat == "context_rms":
                per_head = torch.stack(values).mean(0)
                out[f"diag/context_rms/{layer}"] = per_head.mean().item()
                out[f"diag/context_rms_min/{layer}"] = per_head.min().item()
                out[f"diag/context_rms_max/{layer}"] = per_head.max().item()
            elif stat in ("act_max", "qk_logit_max"):
                out[f"diag/{key}"] = torch.stack(values).amax().item()
            else:
                out[f"diag/{key}"] = torch.stack(values).mean().item()
        for stat, reduce in (
            ("act_max", max),
            ("qk_logit_max", max),
            ("context_rms", _mean),
            ("sink_mass", _mean),
            ("lambda_mean", _mean),
        ):
            per_layer = [v for k, v in out.items() if k.startswith(f"diag/{stat}/L")]
            if per_layer:
                out[f"diag/{stat}/{'max' if reduce is max else 'mean'}"] = float(reduce(per_layer))
        return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
