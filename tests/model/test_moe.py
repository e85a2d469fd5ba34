"""The mixture-of-experts feed-forward: exact where it must be, balanced by its bias, losses in the output."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from model import ModelConfig, Transformer
from model.flops import flops_per_token
from model.moe import MoE, dropped_share, load_balance_loss, router_z_loss

DENSE = ModelConfig(vocab_size=96, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_hidden=48)
MOE = dataclasses.replace(DENSE, moe_experts=4, moe_top_k=2, moe_hidden=24)


def tokens(batch: int = 2, n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, DENSE.vocab_size, (batch, n), generator=torch.Generator().manual_seed(seed))


def test_one_expert_top1_is_the_dense_swiglu_with_the_same_weights() -> None:
    torch.manual_seed(0)
    dense = Transformer(DENSE)
    moe = Transformer(dataclasses.replace(DENSE, moe_experts=1, moe_top_k=1))
    state = dense.state_dict()
    for i in range(DENSE.n_layers):
        for w in ("w1", "w2", "w3"):
            state[f"layers.{i}.feed_forward.experts.{w}"] = state.pop(f"layers.{i}.feed_forward.{w}.weight")[
                None
            ]
        state[f"layers.{i}.feed_forward.router.gate.weight"] = torch.randn(1, DENSE.d_model)
        state[f"layers.{i}.feed_forward.router.expert_bias"] = torch.zeros(1)
    moe.load_state_dict(state)
    x = tokens()
    torch.testing.assert_close(moe(x), dense(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shared", [0, 1])
def test_grouped_matmul_and_the_per_expert_loop_give_the_same_numbers(shared: int) -> None:
    cfg = dataclasses.replace(MOE, moe_shared_experts=shared, moe_aux_coef=0.01, moe_z_coef=0.001)
    results = []
    for impl in ("grouped", "loop"):
        torch.manual_seed(0)
        model = Transformer(dataclasses.replace(cfg, moe_impl=impl))
        logits, aux = model(tokens(), return_aux=True)
        (logits.square().mean() + sum(aux.values())).backward()
        results.append((logits, aux, {n: p.grad for n, p in model.named_parameters()}))
    (logits_g, aux_g, grads_g), (logits_l, aux_l, grads_l) = results
    assert torch.equal(logits_g, logits_l)
    assert aux_g.keys() == aux_l.keys() and all(torch.equal(aux_g[k], aux_l[k]) for k in aux_g)
    for name, grad in grads_g.items():
        assert torch.equal(grad, grads_l[name]), name


def test_bias_balancing_moves_an_imbalanced_router_towards_balance() -> None:
    torch.manual_seed(0)
    moe = MoE(dataclasses.replace(MOE, moe_top_k=1, moe_bias_rate=0.003), layer_idx=0)
    moe.init_weights(0.02, 0.02)
    with torch.no_grad():
        moe.router.gate.weight[0] += 0.1  # expert 0 wins most tokens: a collapsed router
    x = torch.randn(512, MOE.d_model) + 0.5  # a shared direction all tokens lean along

    def max_share() -> float:
        with torch.no_grad():
            experts = moe.router(x).experts
        return torch.bincount(experts.flatten(), minlength=4).max().item() / experts.numel()

    before = max_share()
    for _ in range(300):  # the trainer's step: training forwards count the load, then balance() after it
        moe(x)
        moe.router.balance(moe.router.tokens_per_expert.clone())
    assert before > 0.9
    assert max_share() < 0.3  # 0.25 is perfect balance among 4 experts
    assert moe.router.tokens_per_expert.sum() == 0  # the count restarts after every update


def test_auxiliary_losses_leave_the_forward_weighted_by_their_coefficients() -> None:
    x = tokens()
    torch.manual_seed(0)
    assert Transformer(DENSE)(x, return_aux=True)[1] == {}  # dense reports none
    assert Transformer(MOE)(x, return_aux=True)[1] == {}  # nor the default balancer (the bias update)
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(MOE, moe_aux_coef=0.5, moe_z_coef=0.01))
    routings = []
    for layer in model.layers:
        layer.feed_forward.router.register_forward_hook(lambda m, a, out: routings.append(out))
    _, reported = model(x, return_aux=True)
    assert sorted(reported) == ["moe_aux/L0", "moe_aux/L1", "moe_z/L0", "moe_z/L1"]
    for i, routing in enumerate(routings):
        torch.testing.assert_close(reported[f"moe_aux/L{i}"], 0.5 * load_balance_loss(routing))
        torch.testing.assert_close(reported[f"moe_z/L{i}"], 0.01 * router_z_loss(routing))
    assert all(loss.requires_grad for loss in reported.values())  # the router learns from them


def test_capacity_drops_each_experts_lowest_scoring_assignments_and_keeps_the_rest() -> None:
    # 4 tokens, 4 experts, top-2, factor 0.5: each expert takes ceil(0.5 * 4 * 2 / 4) = 1 assignment.
    cfg = dataclasses.replace(MOE, moe_shared_experts=1, moe_capacity_factor=0.5)
    torch.manual_seed(0)
    moe = MoE(cfg, layer_idx=0)
    moe.init_weights(0.02, 0.02)
    logits = torch.tensor([[3.0, 2, 0, 0], [4, 0, 2, 0], [0, 3, 0, 1], [0, 0, 3, 2]])  # [token, expert]
    x = torch.eye(4, MOE.d_model)  # token t is the basis vector e_t, so its router logits are row t
    with torch.no_grad():
        moe.router.gate.weight.zero_()[:, :4] = logits.T
    routings = []
    moe.router.register_forward_hook(lambda m, a, out: routings.append(out))
    with torch.no_grad():
        out = moe(x)
    (routing,) = routings
    kept = [set(routing.experts[t][routing.kept[t]].tolist()) for t in range(4)]
    # by probability, expert 0 keeps token 1 (0.85) over 0 (0.68); 1 keeps 2 over 0; 2: 3 over 1; 3: 3 over 2
    assert kept == [set(), {0}, {1}, {2, 3}]
    assert dropped_share(routing) == 0.5
    w1, w2, w3 = moe.experts.w1, moe.experts.w2, moe.experts.w3
    for t in range(4):
        expected = moe.shared_experts(x[t])  # a token keeps the shared experts, and its other routed ones,
        for e, weight in zip(routing.experts[t].tolist(), routing.weights[t], strict=True):
            if e in kept[t]:  # at the weights routing gave them (no renormalisation over what is kept)
                expected = expected + weight * (F.silu(w1[e] @ x[t]) * (w3[e] @ x[t])) @ w2[e].T
        torch.testing.assert_close(out[t], expected)
    moe.router.capacity_factor = 0.0  # dropless (the default): nothing dropped, and exactly 0 logged
    with torch.no_grad():
        moe(x)
    assert routings[1].kept is None and dropped_share(routings[1]) == 0


def test_first_dense_layers_keep_the_dense_feed_forward() -> None:
    model = Transformer(dataclasses.replace(MOE, moe_first_dense=1))
    assert not isinstance(model.layers[0].feed_forward, MoE)
    assert isinstance(model.layers[1].feed_forward, MoE)


def size(name: str, attention: str = "diff_v2") -> ModelConfig:
    from omegaconf import OmegaConf

    from conf import compose

    return OmegaConf.to_object(compose([f"model={name}", f"attention={attention}"]).model)


def test_the_30a3_preset_has_qwen3_30b_a3bs_total_and_active_parameters() -> None:
    with torch.device("meta"):
        model = Transformer(size("30a3", "baseline"))  # the baseline is Qwen3-30B-A3B's attention
    assert 30.4e9 < model.num_params() < 30.6e9  # Qwen3-30B-A3B: 30.5B total
    assert 3.3e9 < model.num_active_params() < 3.4e9  # 3.3B active


def test_flops_and_the_summary_count_the_active_experts_only() -> None:
    from model.summary import summarize_model

    moe, dense = size("micro_moe"), size("micro")  # equal active feed-forward width: 2 x 64 = 128
    router = 3 * 2 * moe.d_model * moe.moe_experts * moe.n_layers  # forward + backward of the D -> E router
    assert flops_per_token(moe, 32) - flops_per_token(dense, 32) == router
    moe_params, dense_params = (summarize_model(c.name, c, 32, 2).params for c in (moe, dense))
    assert dense_params["active"] == dense_params["total"]
    assert moe_params["active"] == dense_params["total"] + moe.d_model * moe.moe_experts * moe.n_layers
    assert moe_params["total"] == moe_params["active"] + 2 * 3 * moe.d_model * 64 * moe.n_layers  # 2 idle


def test_diagnostics_report_each_moe_layers_load_entropy_and_losses() -> None:
    from model.diagnostics import DiagnosticsRecorder

    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(MOE, moe_top_k=1, moe_first_dense=1))
    model.layers[1].feed_forward.router.expert_bias[0] = 10.0  # every token chooses expert 0
    with DiagnosticsRecorder(model) as rec, torch.no_grad():
        model(tokens())
    out = rec.summary()
    assert not any(key.startswith("diag/moe_") and key.endswith("/L0") for key in out)  # L0 is dense
    assert (out["diag/moe_load_max/L1"], out["diag/moe_load_min/L1"]) == (4.0, 0.0)  # E x the top share
    assert out["diag/moe_load_max/max"] == 4.0
    assert 0 < out["diag/moe_entropy/L1"] <= math.log(4) + 1e-6  # the probabilities, untouched by the bias
    assert out["diag/moe_aux/L1"] > 1.0 and out["diag/moe_z/L1"] > 0  # 1.0 would be balanced
    assert model.layers[1].feed_forward.router.tokens_per_expert.sum() == 0  # diagnostics count no load


@pytest.mark.parametrize("capacity", [0.0, 0.5], ids=["dropless", "capacity"])
def test_the_chunked_loss_gives_an_moe_model_the_whole_logits_loss_and_gradients(capacity: float) -> None:
    cfg = dataclasses.replace(MOE, moe_aux_coef=0.1, moe_z_coef=0.01, moe_capacity_factor=capacity)
    results = []
    for chunk in (0, 7):
        torch.manual_seed(0)
        model = Transformer(dataclasses.replace(cfg, loss_chunk_tokens=chunk))
        loss, aux = model(tokens(3, 16), targets=tokens(3, 16, seed=1), return_aux=True)
        (loss + sum(aux.values())).backward()
        results.append((loss.detach(), aux, {n: p.grad for n, p in model.named_parameters()}))
    (whole, whole_aux, whole_grads), (chunked, chunked_aux, chunked_grads) = results
    # fp32: only the order of the loss's sums differs (model/loss.py); the routing is the same
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)
    assert chunked_aux.keys() == whole_aux.keys() and len(whole_aux) == 4
    assert all(torch.equal(chunked_aux[k], whole_aux[k]) for k in whole_aux)
    for name, grad in whole_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
