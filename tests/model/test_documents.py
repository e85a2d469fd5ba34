"""Document-aware attention (model.doc_mask): a packed window equals its documents run alone, on the SDPA
mask path and on flash-attn's variable-length layout (a stand-in built on SDPA checks its contract)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import model.kernel as kernel
from model import ModelConfig, Transformer
from model.documents import build_documents, document_ids, document_positions

EOT = 63
CFG = ModelConfig(
    vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_hidden=64, max_seq_len=64
)
VARIANTS = [dict(attention="baseline"), dict(attention="diff_v1"), dict(attention="diff_v2")]
LENGTHS = (7, 12, 5)
"""Three documents of one window; the last one runs to the window's end without its end-of-text token."""


def documents(seed: int = 0) -> list[torch.Tensor]:
    """Random documents, each ended by EOT except the last (a window cuts documents anywhere)."""
    gen = torch.Generator().manual_seed(seed)
    docs = [torch.randint(0, EOT, (n,), generator=gen) for n in LENGTHS]
    for doc in docs[:-1]:
        doc[-1] = EOT
    return docs


def build(**overrides: object) -> Transformer:
    torch.manual_seed(0)
    return Transformer(dataclasses.replace(CFG, eot_token=EOT, **overrides))


def test_document_ids_and_positions_restart_after_each_end_of_text() -> None:
    tokens = torch.tensor([[5, 6, EOT, 7, EOT, 8], [EOT, EOT, 1, 2, 3, 4]])
    ids = document_ids(tokens, EOT)
    assert ids.tolist() == [[0, 0, 0, 1, 1, 2], [0, 1, 2, 2, 2, 2]]
    assert document_positions(ids).tolist() == [[0, 1, 2, 0, 1, 0], [0, 0, 0, 1, 2, 3]]


@pytest.mark.parametrize("restart", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
def test_packed_window_gives_each_document_the_outputs_it_has_alone(variant: dict, restart: bool) -> None:
    docs = documents()
    packed = torch.cat(docs)[None]
    model = build(doc_mask=True, doc_positions=restart, **variant)
    with torch.no_grad():
        out = model(packed)[0]
        alone = [model(doc[None])[0] for doc in docs]
        plain = build(**variant)(packed)[0]
    start = 0
    # RoPE only sees relative positions, so without the restart the documents match up to rounding
    tol = 1e-6 if restart else 1e-4
    for doc, ref in zip(docs, alone, strict=True):
        torch.testing.assert_close(out[start : start + len(doc)], ref, rtol=tol, atol=tol)
        start += len(doc)
    later = slice(LENGTHS[0], None)  # plain causal attention lets later documents read earlier ones
    assert not torch.allclose(plain[later], torch.cat(alone)[later], atol=1e-3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_layer_and_both_heads_of_a_pair_get_the_same_document_boundaries(
    monkeypatch: pytest.MonkeyPatch, variant: dict
) -> None:
    seen = []
    real = kernel.attention

    def recording(q, k, v, impl="auto", docs=None):
        seen.append((q.shape[2], docs))
        return real(q, k, v, impl, docs)

    monkeypatch.setattr("model.attention.attention", recording)
    model = build(doc_mask=True, **variant)
    with torch.no_grad():
        model(torch.cat(documents())[None])
    assert len({id(docs) for _, docs in seen}) == 1 and seen[0][1] is not None
    if variant["attention"] == "diff_v2":  # one call over all 2h query heads, so each pair shares the mask
        assert [heads for heads, _ in seen] == [2 * CFG.n_heads] * CFG.n_layers


def standin_flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal):
    """flash_attn_varlen_func's contract, built on SDPA: [total, heads, d] inputs, int32 cumulative segment
    offsets, one head size, contiguous GQA groups; each segment attended causally and alone."""
    assert q.dim() == k.dim() == v.dim() == 3 and q.shape[0] == k.shape[0] == cu_seqlens_q[-1].item()
    assert q.shape[-1] == k.shape[-1] == v.shape[-1], "flash-attn needs one head size"
    assert cu_seqlens_q.dtype == torch.int32 and torch.equal(cu_seqlens_q, cu_seqlens_k) and causal
    lengths = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).tolist()
    assert max_seqlen_q == max_seqlen_k == max(lengths)
    standin_flash_attn_varlen_func.calls += 1
    outs = []
    for start, stop in zip(cu_seqlens_q[:-1].tolist(), cu_seqlens_q[1:].tolist(), strict=True):
        seg = [t[start:stop].transpose(0, 1)[None] for t in (q, k, v)]
        outs.append(F.scaled_dot_product_attention(*seg, is_causal=True, enable_gqa=True)[0].transpose(0, 1))
    return torch.cat(outs)


standin_flash_attn_varlen_func.calls = 0


@pytest.mark.parametrize("restart", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
def test_flash_varlen_layout_with_standin_equals_the_sdpa_mask(
    monkeypatch: pytest.MonkeyPatch, variant: dict, restart: bool
) -> None:
    monkeypatch.setattr(kernel, "flash_attn_func", lambda *a, **k: pytest.fail("plain kernel used"))
    monkeypatch.setattr(kernel, "flash_attn_varlen_func", standin_flash_attn_varlen_func)
    sdpa = build(doc_mask=True, doc_positions=restart, attn_impl="sdpa", **variant)
    flash = build(doc_mask=True, doc_positions=restart, attn_impl="flash", **variant)
    # two rows: a document continues from row 0 into row 1, which must still start a new segment
    window = torch.cat([*documents(0), *documents(1)])
    batch = window[: 2 * 16].view(2, 16)
    calls = standin_flash_attn_varlen_func.calls
    with torch.no_grad():
        torch.testing.assert_close(flash(batch), sdpa(batch), rtol=1e-5, atol=1e-5)
    assert standin_flash_attn_varlen_func.calls > calls
    docs = build_documents(batch, EOT, for_varlen=True)
    row_starts = {0, 16}
    assert row_starts <= set(docs.cu_seqlens.tolist()) and docs.cu_seqlens[-1] == 32


def test_doc_mask_is_off_by_default_and_its_options_name_their_fields() -> None:
    assert not ModelConfig().doc_mask and not ModelConfig().doc_positions
    with pytest.raises(ValueError, match="model.doc_positions=True needs model.doc_mask=true"):
        Transformer(dataclasses.replace(CFG, doc_positions=True))
    with pytest.raises(ValueError, match=r"model.doc_mask=true needs model.eot_token"):
        Transformer(dataclasses.replace(CFG, doc_mask=True))
    with pytest.raises(
        ValueError, match=r"model.eot_token=64 must be -1 \(from the dataset\) or in \[0, 64\)"
    ):
        Transformer(dataclasses.replace(CFG, doc_mask=True, eot_token=64))


def test_generate_runs_with_doc_mask_and_the_kernel_refuses_a_full_windows_documents_with_a_kv_cache() -> (
    None
):
    model = build(doc_mask=True)
    q = torch.randn(1, 1, 2, 8)
    docs = build_documents(torch.zeros(1, 4, dtype=torch.long), EOT, for_varlen=False)
    with pytest.raises(ValueError, match="a full window or a mask over the cached keys"):
        kernel.attention(q, torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8), "sdpa", docs)
    out = model.generate(torch.tensor([[1, 2, EOT, 3]]), 3, temperature=0.0)
    assert out.shape == (1, 7)


def test_bench_documents_prints_the_cost_of_each_mode_against_plain_causal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench.documents import main

    main(["--seq-len", "32", "--micro-batch", "2", "--rounds", "1", "--attentions", "diff_v2"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("diff_v2")]
    assert [line.split()[1] for line in lines] == ["plain", "doc_mask", "+"]
    assert "(1.00x)" in lines[0] and all("x)" in line for line in lines)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v["attention"])
def test_kv_cached_decoding_keeps_documents_and_their_positions(variant: dict) -> None:
    """An end-of-text token in the prompt (and one in the decoded part) starts a new document for the cached
    forward as for the full one: prefill, a chunk, then one token at a time give the full forward's logits."""
    model = build(doc_mask=True, doc_positions=True, **variant).eval()
    window = torch.stack([torch.cat(documents(seed)) for seed in (0, 1)])  # [2, 24]: EOTs at 6 and 18
    with torch.no_grad():
        full = model(window)
        caches = model.new_kv_caches(batch=2, max_len=window.shape[1])
        pieces = [model(window[:, :10], caches), model(window[:, 10:15], caches)]
        pieces += [model(window[:, i : i + 1], caches) for i in range(15, window.shape[1])]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)  # fp32


def test_greedy_generate_of_a_doc_mask_model_follows_its_full_forward() -> None:
    model = build(doc_mask=True, doc_positions=True, attention="diff_v2").eval()
    prompt = torch.cat(documents())[None, :14]  # two documents: the second starts after the EOT at 6
    out = model.generate(prompt, max_new_tokens=8, temperature=0.0)
    expected = prompt
    with torch.no_grad():
        for _ in range(8):
            expected = torch.cat([expected, model(expected)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, expected)
