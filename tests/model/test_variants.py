"""The declared interfaces: an attention variant is one module + one preset, the block's feed-forward comes
from a registry, and both plug into the model, its FLOPs, its KV cache and its diagnostics unchanged."""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import model.config as model_config
import model.feed_forward as feed_forward
import model.variants as variants
from model import DiagnosticsRecorder, ModelConfig, Transformer
from model.attention import AttentionBase, Rope
from model.documents import Documents
from model.kv_cache import KVCache

PRESETS = Path(__file__).resolve().parents[2] / "conf" / "attention"
CFG = ModelConfig(
    vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_hidden=64, max_seq_len=32
)


def test_every_preset_names_a_registered_variant_and_every_variant_has_its_preset():
    named = {p.stem: OmegaConf.load(p).get("attention", "diff_v2") for p in PRESETS.glob("*.yaml")}
    assert set(named.values()) == set(variants.VARIANTS) == {a.value for a in model_config.Attention}
    assert set(variants.VARIANTS) <= set(named)


class HalfHeads(AttentionBase):
    """A toy variant written against the interface only: softmax heads whose outputs are halved."""

    def __init__(self, cfg: ModelConfig) -> None:
        width = cfg.n_heads * cfg.head_dim
        super().__init__(
            cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, width, attn_impl=cfg.attn_impl
        )
        self.n_out_heads, self.out_head_dim = cfg.n_heads, cfg.head_dim

    def forward(
        self, x: torch.Tensor, rel_pos: Rope, cache: KVCache | None = None, docs: Documents | None = None
    ) -> torch.Tensor:
        q, k, v = self.project(x, rel_pos)
        k, v = self.cached(k, v, cache)
        return self.output(0.5 * self.kernel(q, k, v, docs))

    def reset_variant_parameters(self) -> None:
        pass

    def lambda_values(self, x: torch.Tensor) -> None:
        return None

    def rotated_qk(self, x: torch.Tensor, rel_pos: Rope) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, _ = self.project(x, rel_pos)
        return q, k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)

    def output_head_maps(self, n_maps: int) -> list[list[int]]:
        return [[j] for j in range(n_maps)]


class HalfHeadsVariant:
    name = "half_heads"

    def build(self, cfg: ModelConfig, layer_idx: int) -> HalfHeads:
        return HalfHeads(cfg)

    def projection_macs(self, cfg: ModelConfig) -> int:
        return 4 * cfg.d_model * cfg.n_heads * cfg.head_dim  # h = h_kv * 2 here: Q, O of h and K, V of h/2

    def kernel_flops(self, cfg: ModelConfig, seq_len: int) -> float:
        return 1234.0


@pytest.fixture
def half_heads(monkeypatch: pytest.MonkeyPatch) -> ModelConfig:
    """The toy variant registered as model.attention=half_heads (what its module and preset would do)."""
    names = [a.value for a in model_config.Attention] + ["half_heads"]
    monkeypatch.setattr(model_config, "Attention", StrEnum("Attention", names))
    monkeypatch.setitem(variants.VARIANTS, "half_heads", HalfHeadsVariant())
    return dataclasses.replace(CFG, attention="half_heads")


def test_a_new_variant_plugs_into_the_model_its_flops_cache_and_diagnostics(half_heads: ModelConfig):
    torch.manual_seed(0)
    model = Transformer(half_heads).eval()
    assert isinstance(model.layers[0].attention, HalfHeads)
    x = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), DiagnosticsRecorder(model) as rec:
        full = model(x)
    assert "diag/context_rms/L1" in rec.summary()
    caches = model.new_kv_caches(2, 12)
    with torch.no_grad():
        pieces = [model(x[:, :5], caches)] + [model(x[:, i : i + 1], caches) for i in range(5, 12)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    ffn = 3 * CFG.d_model * CFG.ffn_hidden
    per_layer = 2.0 * (4 * CFG.d_model * CFG.n_heads * CFG.head_dim + ffn) + 1234.0
    assert model.flops_per_token(12) == pytest.approx(
        3 * (2 * per_layer + 2.0 * CFG.d_model * CFG.vocab_size)
    )


class ScaledFeedForward(feed_forward.FeedForward):
    """A feed-forward that reports an auxiliary loss, as a mixture of experts will."""

    def forward(self, x: torch.Tensor, aux_losses: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        out = super().forward(x)
        if aux_losses is not None:
            aux_losses[f"ffn_rms/{id(self)}"] = out.pow(2).mean()
        return out


class ScaledKind(feed_forward.SwiGLU):
    name = "scaled"

    def build(self, cfg: ModelConfig, layer_idx: int) -> ScaledFeedForward:
        return ScaledFeedForward(cfg.d_model, cfg.ffn_hidden)


def test_the_block_builds_its_feed_forward_from_the_registry_and_forward_collects_aux_losses(monkeypatch):
    monkeypatch.setitem(feed_forward.FEED_FORWARDS, "scaled", ScaledKind())
    monkeypatch.setattr(feed_forward, "DEFAULT_FEED_FORWARD", "scaled")
    torch.manual_seed(0)
    model = Transformer(CFG)
    assert all(isinstance(layer.feed_forward, ScaledFeedForward) for layer in model.layers)
    logits, aux = model(torch.zeros(1, 4, dtype=torch.long), return_aux=True)
    assert len(aux) == CFG.n_layers and logits.shape == (1, 4, CFG.vocab_size)
