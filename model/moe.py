"""Mixture-of-experts feed-forward: a token-choice top-k router over E SwiGLU experts held as grouped weights.

    out = shared(x) + sum over the token's top-k experts e of  weight_e * SwiGLU_e(x)

- Router: logits x W_g in fp32 (autocast off: bf16 logits would tie and flip close choices), softmax
  probabilities; the top-k are chosen by probability + a per-expert bias (DeepSeek-V3's auxiliary-loss-free
  balancing: the bias steers the choice, never the weights), weighted by their probabilities, renormalised
  to sum to 1 with model.moe_route_norm (Qwen3-MoE).
- Dropless by default (Megatron-LM's dropless MoE): every routed slot is computed, however uneven the load.
  With model.moe_capacity_factor > 0 each expert keeps at most its capacity of slots, the highest-scoring
  ones (`within_capacity`); the rest are dropped before any expert (or, under expert parallel, any other
  rank) sees them.
- Experts: w1, w3 [E, H, D] and w2 [E, D, H], each expert's matrices laid out as nn.Linear's weight. The
  routed slots are sorted by expert and run through one `torch._grouped_mm` per projection where the device
  supports it, else one matmul per expert (model.moe_impl); on CPU the two give bitwise the same numbers.
- Balancing: the bias update (`Router.balance`, applied by the trainer after each step from the loads the
  router counted, train/moe.py) and/or the Switch auxiliary loss; the router z-loss. The losses, weighted by
  their coefficients, go into the block's `aux_losses` dict as `moe_aux/L<i>` and `moe_z/L<i>`
  (model/feed_forward.py), leave the model through `Transformer.forward(..., return_aux=True)`, and the
  trainer adds them to the loss.

No torch.distributed here: expert parallelism and the all-reduce of the loads belong to train/.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, moe_hidden
from .swiglu import FeedForward


class Routing(NamedTuple):
    """The router's decision for T tokens (the forward output a diagnostics hook reads)."""

    logits: torch.Tensor
    """[T, E] fp32 router logits."""
    probs: torch.Tensor
    """[T, E] softmax of the logits."""
    experts: torch.Tensor
    """[T, k] the chosen experts (by probability + bias), int64."""
    weights: torch.Tensor
    """[T, k] fp32 weights of the chosen experts' outputs."""
    kept: torch.Tensor | None = None
    """[T, k] bool: the assignments within their expert's capacity; None when dropless (all of them)."""


def expert_counts(experts: torch.Tensor, n_experts: int) -> torch.Tensor:
    """[E] int64 routed slots per expert. A scatter of ones, not bincount: its shape does not depend on the
    values, so the planner can trace it on fake tensors (train/plan)."""
    slots = experts.flatten()
    return torch.zeros(n_experts, dtype=torch.int64, device=slots.device).index_add_(
        0, slots, torch.ones_like(slots)
    )


def expert_load(experts: torch.Tensor, n_experts: int) -> torch.Tensor:
    """[E] routed slots per expert, as float (sums of them stay exact far past any batch's size)."""
    return expert_counts(experts, n_experts).float()


def load_balance_loss(routing: Routing) -> torch.Tensor:
    """Switch Transformer's E * sum_e f_e * P_e: f_e the share of routed slots expert e got, P_e its mean
    router probability. 1.0 when both are uniform; up to E when one expert takes everything."""
    n_experts = routing.probs.shape[-1]
    share = expert_load(routing.experts, n_experts) / routing.experts.numel()
    return n_experts * (share * routing.probs.mean(0)).sum()


def router_z_loss(routing: Routing) -> torch.Tensor:
    """ST-MoE's mean(logsumexp(logits)^2): keeps router logits small, so the fp32 softmax stays sharp-safe."""
    return torch.logsumexp(routing.logits, dim=-1).pow(2).mean()


def dropped_share(routing: Routing) -> torch.Tensor:
    """The share of the T * k routed assignments dropped by the capacity limit: exactly 0 when dropless."""
    if routing.kept is None:
        return torch.zeros((), device=routing.experts.device)
    return 1.0 - routing.kept.float().mean()


def expert_capacity(capacity_factor: float, tokens: int, top_k: int, n_experts: int) -> int:
    """Assignments one expert may take: ceil(factor * tokens * top_k / experts), the balanced load scaled."""
    return math.ceil(capacity_factor * tokens * top_k / n_experts)


def within_capacity(
    experts: torch.Tensor, scores: torch.Tensor, n_experts: int, capacity: int
) -> torch.Tensor:
    """[T, k] bool: whether each assignment (experts [T, k], its router score scores [T, k]) is among the
    `capacity` highest-scoring of its expert's assignments (equal scores: the earlier token first)."""
    flat = experts.flatten()
    by_score = torch.argsort(scores.flatten(), descending=True, stable=True)
    order = by_score[torch.argsort(flat[by_score], stable=True)]  # grouped by expert, best first in each
    counts = expert_counts(flat, n_experts)
    rank = torch.arange(flat.numel(), device=flat.device) - (counts.cumsum(0) - counts)[flat[order]]
    kept = torch.empty_like(flat, dtype=torch.bool)
    kept[order] = rank < capacity
    return kept.view_as(experts)


def router_entropy(routing: Routing) -> torch.Tensor:
    """Mean over tokens of the router distribution's entropy, in nats (log E when uniform, 0 when sure)."""
    return -(routing.probs * torch.log(routing.probs.clamp(min=1e-30))).sum(-1).mean()


class Router(nn.Module):
    """Token-choice top-k routing with a non-learned balancing bias (a persistent buffer: checkpointed)."""

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        top_k: int,
        route_norm: bool,
        bias_rate: float,
        capacity_factor: float,
    ) -> None:
        super().__init__()
        self.top_k, self.route_norm, self.bias_rate = top_k, route_norm, bias_rate
        self.capacity_factor = capacity_factor
        self.gate = nn.Linear(d_model, n_experts, bias=False)
        self.register_buffer("expert_bias", torch.zeros(n_experts))
        # Routed slots per expert since the last balance(), counted by training forwards; training resets it
        # every optimizer step, so it is zero whenever a checkpoint is written and needs no saving.
        self.register_buffer("tokens_per_expert", torch.zeros(n_experts), persistent=False)

    def forward(self, x: torch.Tensor) -> Routing:
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(x.float(), self.gate.weight.float())
        probs = logits.softmax(dim=-1)
        with torch.no_grad():
            experts = torch.topk(probs + self.expert_bias, self.top_k, dim=-1, sorted=False).indices
        scores = probs.gather(-1, experts)
        weights = scores / scores.sum(-1, keepdim=True) if self.route_norm else scores
        kept = None
        if self.capacity_factor > 0:
            n_experts = probs.shape[-1]
            capacity = expert_capacity(self.capacity_factor, x.shape[0], self.top_k, n_experts)
            kept = within_capacity(experts, scores.detach(), n_experts, capacity)
        # Only gradient-taking training forwards count: not evaluation, not diagnostics. An activation-
        # checkpointing recompute counts its tokens twice, every expert alike: balance() reads only the sign.
        # The count is the router's choices, dropped ones included: the bias balances the demand that a
        # capacity limit would otherwise clip unseen.
        if self.training and torch.is_grad_enabled() and self.bias_rate > 0:
            with torch.no_grad():
                self.tokens_per_expert += expert_load(experts, self.tokens_per_expert.numel())
        return Routing(logits, probs, experts, weights, kept)

    @torch.no_grad()
    def balance(self, tokens_per_expert: torch.Tensor) -> None:
        """DeepSeek-V3's update: each expert's bias += bias_rate * sign(mean load - its load), centred so the
        biases do not drift together; then the count restarts. `tokens_per_expert` is the load to balance
        (the trainer sums this router's counts over ranks first)."""
        delta = self.bias_rate * torch.sign(tokens_per_expert.mean() - tokens_per_expert)
        self.expert_bias += delta - delta.mean()
        self.tokens_per_expert.zero_()


def grouped_mm_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Where torch._grouped_mm runs: CPU (any float dtype eagerly, bf16 under torch.compile, whose shape rule
    for it is the CUDA kernel's), CUDA bf16 on compute capability >= 9.0."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if device.type == "cpu":
        return dtype == torch.bfloat16 or not torch.compiler.is_compiling()
    if device.type == "cuda":
        return dtype == torch.bfloat16 and torch.cuda.get_device_capability(device) >= (9, 0)
    return False


class GroupedExperts(nn.Module):
    """E SwiGLU experts; forward takes the routed slots sorted by expert and how many each expert got."""

    def __init__(self, n_experts: int, d_model: int, hidden: int, impl: str) -> None:
        super().__init__()
        self.impl = impl
        self.w1 = nn.Parameter(torch.empty(n_experts, hidden, d_model))
        self.w3 = nn.Parameter(torch.empty(n_experts, hidden, d_model))
        self.w2 = nn.Parameter(torch.empty(n_experts, d_model, hidden))

    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """x [M, D] sorted by expert, counts [E] (summing to M) -> [M, D] in the compute dtype."""
        return self.run(x, counts, self.w1, self.w2, self.w3)

    def run(
        self, x: torch.Tensor, counts: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor
    ) -> torch.Tensor:
        """The experts' SwiGLU with the given weights ([E', ...], E' = len(counts)): the seam expert parallel
        (train/expert_parallel.py) calls with a rank's own experts and the tokens sent to them."""
        # Under autocast the matmuls run in its dtype, as the dense Linear's would; _grouped_mm has no
        # autocast rule, so both paths cast explicitly.
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else w1.dtype
        w1, w2, w3 = (w.to(dtype) for w in (w1, w2, w3))
        x = x.to(dtype)
        grouped = self.impl == "grouped" or (self.impl == "auto" and grouped_mm_supported(x.device, dtype))
        # One elementwise SwiGLU over all slots in both paths: CPU kernels round a vector's tail differently
        # from its body, so per-expert slices would not be bitwise the grouped result.
        h = F.silu(self._project(x, w1, counts, grouped)) * self._project(x, w3, counts, grouped)
        return self._project(h, w2, counts, grouped)

    @staticmethod
    def _project(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor, grouped: bool) -> torch.Tensor:
        """Each expert's rows of x [M, in] times its matrix w[e] [out, in] transposed -> [M, out]."""
        if grouped:
            return torch._grouped_mm(x, w.transpose(-2, -1), offs=counts.cumsum(0).to(torch.int32))
        parts = torch.split(x, counts.tolist())
        return torch.cat([x_e @ w[e].transpose(0, 1) for e, x_e in enumerate(parts)])

    @torch.no_grad()
    def init_weights(self, init_std: float, residual_std: float) -> None:
        nn.init.normal_(self.w1, std=init_std)
        nn.init.normal_(self.w3, std=init_std)
        nn.init.normal_(self.w2, std=residual_std)


class MoE(nn.Module):
    """The mixture-of-experts feed-forward of block `layer_idx`: `MoE(cfg, i)(x [B, N, D], aux_losses)`."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_experts, self.top_k = cfg.moe_experts, cfg.moe_top_k
        self.aux_coef, self.z_coef = cfg.moe_aux_coef, cfg.moe_z_coef
        hidden = moe_hidden(cfg)
        self.router = Router(
            cfg.d_model,
            cfg.moe_experts,
            cfg.moe_top_k,
            cfg.moe_route_norm,
            cfg.moe_bias_rate,
            cfg.moe_capacity_factor,
        )
        self.experts = GroupedExperts(cfg.moe_experts, cfg.d_model, hidden, str(cfg.moe_impl))
        shared = cfg.moe_shared_experts * hidden
        self.shared_experts = FeedForward(cfg.d_model, shared) if shared else None

    def forward(self, x: torch.Tensor, aux_losses: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # [T, D]
        routing = self.router(flat)
        slots = routing.experts.flatten()  # [T * k]: slot s belongs to token s // k
        if routing.kept is None:
            order = torch.argsort(slots, stable=True)  # slots grouped by expert, tokens in order within each
        else:  # only the slots within capacity reach an expert
            kept = routing.kept.flatten().nonzero().squeeze(1)
            order = kept[torch.argsort(slots[kept], stable=True)]
        counts = expert_counts(slots[order], self.n_experts)
        out_sorted = self.experts(flat[order // self.top_k], counts)
        # Unsort by a scatter of distinct indices and sum each token's k outputs: deterministic on every
        # device, unlike an index_add of the sorted outputs into the tokens. A dropped slot's output is 0.
        out = out_sorted.new_zeros(slots.numel(), out_sorted.shape[-1]).index_copy_(0, order, out_sorted)
        out = out.view(*routing.weights.shape, -1)
        out = (out * routing.weights.unsqueeze(-1).to(out.dtype)).sum(1)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        if aux_losses is not None:
            self._add_aux_losses(routing, aux_losses)
        return out.view(x.shape).to(x.dtype)

    def inactive_params(self) -> int:
        """Routed-expert parameters one token does not use: (E - k) / E of them."""
        # Shapes only (global ones for a sharded DTensor): indexing an expert out would be a collective.
        per_expert = sum(p.numel() // self.n_experts for p in self.experts.parameters())
        return per_expert * (self.n_experts - self.top_k)

    def _add_aux_losses(self, routing: Routing, aux_losses: dict[str, torch.Tensor]) -> None:
        if self.aux_coef > 0:
            aux_losses[f"moe_aux/L{self.layer_idx}"] = self.aux_coef * load_balance_loss(routing)
        if self.z_coef > 0:
            aux_losses[f"moe_z/L{self.layer_idx}"] = self.z_coef * router_z_loss(routing)

    @torch.no_grad()
    def init_weights(self, init_std: float, residual_std: float) -> None:
        nn.init.normal_(self.router.gate.weight, std=init_std)
        self.router.expert_bias.zero_()
        self.router.tokens_per_expert.zero_()
        self.experts.init_weights(init_std, residual_std)
        if self.shared_experts is not None:
            self.shared_experts.init_weights(init_std, residual_std)
