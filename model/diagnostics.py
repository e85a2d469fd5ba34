"""DIFF diagnostics: the quantities the blog's claims are about, read with forward hooks during a forward.

    with DiagnosticsRecorder(model) as rec:
        model(tokens)
    rec.summary()   # {"diag/context_rms/L0": ..., "diag/sink_mass_max/max": ..., ...}
    rec.per_head()  # {"context_rms/L0": tensor[h], "sink_mass/L0": tensor[query heads]}

Per layer i (keys end in /L{i}); what the blog predicts in brackets:
- context_rms, context_rms_min, context_rms_max: each output head's context RMS *relative to the values it
  reads*: RMS over the head width of its output before o_proj (DIFF V1: before its per-head RMSNorm), divided
  by sqrt(sum_t' p(t, t') * mean(v_t'^2)), the attention-weighted RMS of the values its softmax map(s) read
  (the mean of its two maps for a DIFF head), per query t; then the mean over tokens. Mean over heads, and
  the min / max over heads. [softmax attention: within [1/sqrt(n), 1] for n attended tokens (1 is exact:
  an average of vectors is never longer than their RMS); DIFF V2: (0, sqrt(2)), a head can output ~0;
  diff_v2_no_lambda: much smaller at init, as a1 ~ a2.]
- sink_mass, sink_mass_max: attention probability on the first token (with model.doc_mask: of the query's
  document; the maps then stay within documents) from the later half of the query positions (t >= N/2),
  per softmax map (DIFF V2's 2h maps, V1's sub-head maps, the baseline's heads), mean and max over maps.
  [a uniform map reads ~1/t there, a sink head ~1; the blog: DIFF V2 needs no sink.]
- act_max, act_ratio: max |x| and max |x| / RMS(x) of the block's output (the residual stream) over the
  whole batch: the activation outlier. [DIFF V2: smaller than the baseline's.]
- qk_logit_max: the largest scaled logit q.k / sqrt(d) over causal pairs and query heads. [DIFF V2: smaller]
- lambda_mean, lambda_std: DIFF V2's lambda per token and head (sigmoid(x W_lambda), or the raw projection for
  lambda_mode=linear); DIFF V1's scalar lambda (std 0). Absent for the baseline and lambda_mode=none.
- MoE blocks only (model/moe.py), from the router's decision: moe_load_max, moe_load_min: the largest and
  smallest expert's share of the routed slots times E (1 = perfect balance; max E, min 0); moe_entropy: the
  router distribution's entropy in nats (log E = uniform); moe_aux: the Switch balance loss E * sum f_e P_e
  (1 when balanced, whatever model.moe_aux_coef); moe_z: the router z-loss mean(logsumexp(logits)^2);
  moe_dropped: the share of routed assignments over their expert's capacity (model.moe_capacity_factor),
  exactly 0 when dropless (the default). Overall: moe_load_max/max, moe_load_min/min, moe_entropy/mean,
  moe_dropped/max.
Overall: act_max/max, act_ratio/max, qk_logit_max/max, context_rms/mean, context_rms_min/min,
context_rms_max/max, sink_mass/mean, sink_mass_max/max, lambda_mean/mean.

Only module hooks are used, so this works when every block is wrapped by FSDP2 (parameters are unsharded
inside the block's forward, where the hooks run). The attention statistics (context RMS, sinks, qk logits)
recompute the softmax maps explicitly, one head at a time, on the first `sequences` sequences of the batch
(default 8: one sequence's qk max or context RMS is a sample, not the model's figure; context RMS moved by
up to 20% between single sequences); means are over all of them, maxima (qk_logit_max) over all of them.
The activation statistics read the whole batch. Values stay tensors until summary(), so the hooks add no
device synchronisation.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import nn

from .documents import document_positions
from .moe import MoE, Routing, dropped_share, expert_load, load_balance_loss, router_entropy, router_z_loss
from .transformer import TransformerBlock

MAX_STATS = ("act_max", "act_ratio", "qk_logit_max", "moe_load_max")
"""Statistics reduced by their maximum over forwards (the others: mean)."""
PER_HEAD = ("context_rms", "sink_mass")
"""Statistics recorded per head; the summary reduces them over heads per layer."""


class DiagnosticsRecorder:
    """Context manager recording per-layer statistics of every forward run inside it."""

    def __init__(self, model: nn.Module, sequences: int = 8) -> None:
        self.blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
        if not self.blocks:
            raise ValueError(f"{type(model).__name__} holds no TransformerBlock to record")
        if sequences < 1:
            raise ValueError(f"diagnostics sequences={sequences} must be >= 1")
        self.sequences = sequences
        """The attention statistics read the batch's first `sequences` sequences (all of them if fewer)."""
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._records: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._context: dict[int, torch.Tensor] = {}
        """Layer -> its head outputs of the forward in flight, [B, N, heads, width]."""

    def __enter__(self) -> DiagnosticsRecorder:
        for block in self.blocks:
            i, attn = block.layer_idx, block.attention
            self._handles.append(block.register_forward_hook(self._block_hook(i)))
            # each variant names the module whose input is its per-head output (DIFF V1: its sub-norm);
            # prepend: the heads as the attention passed them, before a wrapper's hook (tensor parallel's)
            # converts them
            before_o = attn.head_output_module()
            hook = self._context_hook(i, attn)
            self._handles.append(before_o.register_forward_pre_hook(hook, prepend=True))
            self._handles.append(attn.register_forward_hook(self._attention_hook(i)))
            if isinstance(block.feed_forward, MoE):
                self._handles.append(block.feed_forward.router.register_forward_hook(self._router_hook(i)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._context.clear()

    def _block_hook(self, i: int):
        def hook(module: nn.Module, args: tuple, output: tuple[torch.Tensor, dict]) -> None:
            x = output[0].detach().float()  # the block returns (x, its auxiliary losses)
            peak = x.abs().amax()
            self._records[f"act_max/L{i}"].append(peak)
            self._records[f"act_ratio/L{i}"].append(peak / x.pow(2).mean().sqrt().clamp(min=1e-30))

        return hook

    def _router_hook(self, i: int):
        def hook(router: nn.Module, args: tuple, routing: Routing) -> None:
            with torch.no_grad():
                load = expert_load(routing.experts, routing.probs.shape[-1])
                share = load * load.numel() / load.sum()  # 1.0 per expert when balanced
                self._records[f"moe_load_max/L{i}"].append(share.max())
                self._records[f"moe_load_min/L{i}"].append(share.min())
                self._records[f"moe_entropy/L{i}"].append(router_entropy(routing))
                self._records[f"moe_aux/L{i}"].append(load_balance_loss(routing))
                self._records[f"moe_z/L{i}"].append(router_z_loss(routing))
                self._records[f"moe_dropped/L{i}"].append(dropped_share(routing))

        return hook

    def _context_hook(self, i: int, attn: nn.Module):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0][: self.sequences].detach().float()
            self._context[i] = x.flatten(2).unflatten(-1, (-1, attn.out_head_dim))

        return hook

    def _attention_hook(self, i: int):
        def hook(attn: nn.Module, args: tuple, output: torch.Tensor) -> None:
            x, rel_pos = args[0], args[1]
            cache = args[2] if len(args) > 2 else None
            docs = args[3] if len(args) > 3 else None  # model.doc_mask: the maps stay within documents
            context = self._context.pop(i, None)
            with torch.no_grad():
                lam = attn.lambda_values(x)
                if lam is not None:
                    lam = lam.detach().float()
                    self._records[f"lambda_mean/L{i}"].append(lam.mean())
                    self._records[f"lambda_std/L{i}"].append(lam.std(correction=0))
                if cache is None and x.shape[1] > 1 and context is not None:  # decoding: keys in the cache
                    ids = None if docs is None else docs.ids[: self.sequences]
                    stats = self._map_stats(attn, x[: self.sequences], rel_pos, context, ids)
                    for name, value in stats.items():
                        self._records[f"{name}/L{i}"].append(value)

        return hook

    @staticmethod
    def _map_stats(
        attn: nn.Module, x: torch.Tensor, rel_pos, context: torch.Tensor, doc_ids: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """qk_logit_max, sink_mass per map and context_rms per output head, from explicit softmax maps."""
        q, k = attn.rotated_qk(x, rel_pos)  # [B, N, Hq, d] each, k already per query head
        v = attn.v_proj(x).float()
        v = v.reshape(*v.shape[:2], -1, attn.out_head_dim)  # [B, N, value heads, width]
        n, d, n_maps = q.shape[1], q.shape[-1], q.shape[2]
        v_power = v.pow(2).mean(-1)  # [B, N, value heads]: mean square of each value vector
        maps_per_value = n_maps // v.shape[2]  # query head h reads value head h // maps_per_value
        causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        later = max(1, n // 2)  # "later" queries: the second half; position 0 can only read itself
        first = torch.zeros(x.shape[0], n - later, 1, dtype=torch.long, device=q.device)  # the sink token
        if doc_ids is not None:  # same document only; the sink is the first token of the query's document
            causal = causal & (doc_ids[:, :, None] == doc_ids[:, None, :])  # [B, N, N]
            first = (torch.arange(n, device=q.device) - document_positions(doc_ids))[:, later:, None]
        maxima, sinks, read_power = [], [], []
        for head in range(n_maps):  # one [B, N, N] map at a time keeps memory at B * N^2
            logits = q[:, :, head].float() @ k[:, :, head].float().transpose(1, 2) / math.sqrt(d)
            logits = logits.masked_fill(~causal, float("-inf"))
            maxima.append(logits.amax())
            probs = torch.softmax(logits, dim=-1)
            sinks.append(probs[:, later:].gather(-1, first).mean())
            read_power.append(probs @ v_power[:, :, head // maps_per_value, None])  # [B, N, 1]
        read = torch.cat(read_power, dim=-1)  # [B, N, maps]
        out_rms = context.pow(2).mean(-1).sqrt()  # [B, N, out heads]
        ratios = []
        for j, maps in enumerate(attn.output_head_maps(n_maps)):
            values_rms = read[..., maps].mean(-1).sqrt().clamp(min=1e-30)
            ratios.append((out_rms[..., j] / values_rms).mean())
        return {
            "qk_logit_max": torch.stack(maxima).amax(),
            "sink_mass": torch.stack(sinks),
            "context_rms": torch.stack(ratios),
        }

    def per_head(self) -> dict[str, torch.Tensor]:
        """`<stat>/L<i>` -> one value per head (output heads for context_rms, softmax maps for sink_mass),
        the mean over the forwards recorded."""
        return {
            key: torch.stack(values).mean(0).cpu()
            for key, values in self._records.items()
            if key.split("/")[0] in PER_HEAD
        }

    def summary(self) -> dict[str, float]:
        """Flat `diag/<stat>/L<i>` floats plus overall figures; maxima over forwards for act_max, act_ratio,
        qk_logit_max, means over forwards for the others; per-head statistics reduced over heads."""
        out: dict[str, float] = {}
        for key, values in self._records.items():
            stat, layer = key.split("/")
            if stat in PER_HEAD:
                per_head = torch.stack(values).mean(0)
                out[f"diag/{stat}/{layer}"] = per_head.mean().item()
                out[f"diag/{stat}_max/{layer}"] = per_head.max().item()
                if stat == "context_rms":
                    out[f"diag/context_rms_min/{layer}"] = per_head.min().item()
            elif stat in MAX_STATS:
                out[f"diag/{key}"] = torch.stack(values).amax().item()
            else:
                out[f"diag/{key}"] = torch.stack(values).mean().item()
        for stat, reduce in (
            ("act_max", "max"),
            ("act_ratio", "max"),
            ("qk_logit_max", "max"),
            ("context_rms", "mean"),
            ("context_rms_min", "min"),
            ("context_rms_max", "max"),
            ("sink_mass", "mean"),
            ("sink_mass_max", "max"),
            ("lambda_mean", "mean"),
            ("moe_load_max", "max"),
            ("moe_load_min", "min"),
            ("moe_entropy", "mean"),
            ("moe_dropped", "max"),
        ):
            per_layer = [v for k, v in out.items() if k.startswith(f"diag/{stat}/L")]
            if per_layer:
                value = {"max": max, "min": min, "mean": _mean}[reduce](per_layer)
                out[f"diag/{stat}/{reduce}"] = float(value)
        return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
