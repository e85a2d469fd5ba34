"""The attention kernel, one swappable function: causal softmax attention in flash's [B, N, heads, d] layout.

`attention(q, k, v, impl)` runs either PyTorch SDPA (with `enable_gqa`, any device) or flash-attn's
`flash_attn_func` when the package imports. Both send query head i to kv head i // (Hq / Hkv) (contiguous
GQA groups), which is what DIFF V2's pairing of heads (2j, 2j+1) relies on. Same numbers either way.

With `docs` (model.doc_mask, see model/documents.py) attention also stays inside each document: SDPA gets a
boolean mask, flash-attn its variable-length kernel over the flattened batch. Same numbers either way too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .documents import Documents, sdpa_mask, varlen_segments

try:  # optional: `pip install -e '.[flash]'` on CUDA machines
    from flash_attn import flash_attn_func, flash_attn_varlen_func
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_func = flash_attn_varlen_func = None


def flash_available() -> bool:
    return flash_attn_func is not None


def resolve_impl(impl: str, q: torch.Tensor) -> str:
    """auto -> flash on CUDA with half-precision inputs when flash-attn imports, else sdpa."""
    if impl != "auto":
        return impl
    if flash_available() and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        return "flash"
    return "sdpa"


def _causal_mask(n_q: int, n_k: int, device: torch.device) -> torch.Tensor:
    """Bottom-right aligned causal mask (query i sits at position n_k - n_q + i), as flash-attn's causal."""
    q_pos = torch.arange(n_k - n_q, n_k, device=device)[:, None]
    return torch.arange(n_k, device=device)[None, :] <= q_pos


def _check_docs(q: torch.Tensor, k: torch.Tensor, docs: Documents) -> None:
    b, n_q, n_k = q.shape[0], q.shape[1], k.shape[1]
    full_window = n_q == n_k and tuple(docs.ids.shape) == (b, n_q)
    cached = docs.mask is not None and tuple(docs.mask.shape) == (b, 1, n_q, n_k)
    if not (full_window or cached):
        mask = None if docs.mask is None else tuple(docs.mask.shape)
        raise ValueError(
            f"document masking needs a full window or a mask over the cached keys: q {tuple(q.shape[:2])}, "
            f"k {tuple(k.shape[:2])}, document ids {tuple(docs.ids.shape)}, mask {mask}"
        )


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, docs: Documents | None = None
) -> torch.Tensor:
    """Causal SDPA over [B, N, H, d] tensors; with `docs`, also within each document."""
    n_q, n_k = q.shape[1], k.shape[1]
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if docs is not None:
        mask = docs.mask if docs.mask is not None else sdpa_mask(docs.ids)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    elif n_q == n_k:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    elif n_q == 1:  # one decoded token sees the whole cache
        out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    else:  # SDPA's is_causal is top-left aligned when n_q != n_k; a cached chunk needs bottom-right
        mask = _causal_mask(n_q, n_k, q.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    return out.transpose(1, 2)


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, docs: Documents | None = None
) -> torch.Tensor:
    """Causal flash-attn over [B, N, H, d] tensors (its native layout, no transposes); with `docs`, the
    variable-length kernel over the batch flattened to [B * N, H, d], one segment per document and row."""
    if flash_attn_func is None:
        raise RuntimeError("model.attn_impl='flash' needs the flash-attn package: pip install -e '.[flash]'")
    if docs is None:
        return flash_attn_func(q, k, v, causal=True)
    if docs.cu_seqlens is not None:
        cu_seqlens, longest = docs.cu_seqlens, docs.max_seqlen
    else:
        cu_seqlens, longest = varlen_segments(docs.ids)
    b, n = q.shape[:2]
    out = flash_attn_varlen_func(
        q.reshape(b * n, *q.shape[2:]),
        k.reshape(b * n, *k.shape[2:]),
        v.reshape(b * n, *v.shape[2:]),
        cu_seqlens,
        cu_seqlens,
        longest,
        longest,
        causal=True,
    )
    return out.view(b, n, *out.shape[1:])


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str = "auto", docs: Documents | None = None
) -> torch.Tensor:
    """Causal attention, q [B, Nq, Hq, d], k [B, Nk, Hkv, d], v [B, Nk, Hkv, dv] -> [B, Nq, Hq, dv].

    Scale 1/sqrt(d). Hq must be a multiple of Hkv; query head i reads kv head i // (Hq / Hkv).
    `docs`: document boundaries of the window (Nq == Nk), or of the new tokens over the cached keys (KV-cached
    decoding: a [B, 1, Nq, Nk] mask, run on SDPA); a query attends only inside its document.
    """
    impl = resolve_impl(impl, q)
    if impl not in ("flash", "sdpa"):
        raise ValueError(f"model.attn_impl={impl!r} is not one of ['auto', 'sdpa', 'flash']")
    kernel = flash_attention if impl == "flash" else sdpa_attention
    if docs is not None:
        _check_docs(q, k, docs)
        if q.shape[1] != k.shape[1]:  # flash-attn's variable-length kernel has no KV-cache form: SDPA's mask
            kernel = sdpa_attention
    d = q.shape[-1]
    if v.shape[-1] == d:
        return kernel(q, k, v, docs)
    # Fused kernels want one head size for q, k and v (flash-attn requires it; SDPA's CPU and flash backends
    # fall back to the slow math path otherwise): attend to each d-wide slice of a wider value separately.
    # The softmax weights do not depend on v, so concatenating the slices' outputs is exact.
    return torch.cat([kernel(q, k, part, docs) for part in v.split(d, dim=-1)], dim=-1)
