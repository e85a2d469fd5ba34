"""Document boundaries inside packed training windows, in the forms the attention kernels take.

Prepared shards hold documents back to back, each followed by its end-of-text token, and a training window
is cut from that stream without regard to documents. With `model.doc_mask` a token attends only to earlier
tokens of its own document: the end-of-text token is the last token of the document it closes, and the
token after it starts the next document.

One `Documents` is built per forward from the input tokens (outside the blocks, so a compiled block sees
plain tensors) and handed to every layer, so baseline, DIFF V1 and both heads of a DIFF V2 pair all read the
same boundaries:
- SDPA takes a boolean mask [B, 1, N, N] (causal and same-document), broadcast over heads;
- flash-attn's variable-length kernel takes the window batch flattened to [B * N, heads, d] with the
  cumulative segment lengths `cu_seqlens` (a row boundary also ends a segment) and the longest segment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Documents:
    ids: torch.Tensor
    """[B, N] int64: index of each token's document within its row (0 for the row's first document)."""
    mask: torch.Tensor | None
    """[B, 1, N, N] bool, True where query i may attend key j (j <= i, same document); None when unused."""
    cu_seqlens: torch.Tensor | None
    """[segments + 1] int32 offsets of the segments in the flattened [B * N] batch; None when unused."""
    max_seqlen: int
    """Tokens in the longest segment (flash-attn sizes its launch grid with it); 0 when unused."""


def document_ids(tokens: torch.Tensor, eot_token: int) -> torch.Tensor:
    """[B, N] document index of each token: the number of end-of-text tokens strictly before it in its row."""
    ends = (tokens == eot_token).long()
    return ends.cumsum(dim=1) - ends


def document_positions(ids: torch.Tensor) -> torch.Tensor:
    """[B, N] position of each token within its document (0 at every document start), for RoPE."""
    n = ids.shape[1]
    index = torch.arange(n, device=ids.device).expand_as(ids)
    starts = torch.ones_like(ids, dtype=torch.bool)
    starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - first


def sdpa_mask(ids: torch.Tensor) -> torch.Tensor:
    """[B, 1, N, N] bool mask: causal and within one document."""
    n = ids.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()
    return (ids[:, :, None] == ids[:, None, :]).logical_and(causal).unsqueeze(1)


def varlen_segments(ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(cu_seqlens int32 [segments + 1], longest segment) of the flattened [B * N] batch.

    A segment is one document's run of tokens inside one row; each row's first token starts a segment, so
    no segment spans two rows even when a document continues into the next window.
    """
    b, n = ids.shape
    starts = torch.ones_like(ids, dtype=torch.bool)
    starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
    offsets = starts.flatten().nonzero().flatten()
    total = torch.tensor([b * n], device=ids.device, dtype=offsets.dtype)
    cu_seqlens = torch.cat([offsets, total]).to(torch.int32)
    return cu_seqlens, int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item())


def build_documents(tokens: torch.Tensor, eot_token: int, for_varlen: bool) -> Documents:
    """Boundaries of `tokens` [B, N]; `for_varlen` builds flash-attn's segments instead of SDPA's mask."""
    ids = document_ids(tokens, eot_token)
    if for_varlen:
        cu_seqlens, longest = varlen_segments(ids)
        return Documents(ids, None, cu_seqlens, longest)
    return Documents(ids, sdpa_mask(ids), None, 0)


def cached_documents(history: torch.Tensor, n_new: int, eot_token: int) -> tuple[Documents, torch.Tensor]:
    """KV-cached decoding: the boundaries of the last `n_new` tokens of `history` [B, T] (every token cached
    so far, the new ones included), which attend to all T cached keys, and their positions in their document.

    Returns (Documents with ids [B, n_new] and mask [B, 1, n_new, T]: causal and same document, positions
    [B, n_new]); an end-of-text token anywhere in the history starts a new document after it, as in training.
    """
    ids = document_ids(history, eot_token)
    total = history.shape[1]
    new_ids = ids[:, total - n_new :]
    causal = torch.ones(n_new, total, dtype=torch.bool, device=ids.device).tril(diagonal=total - n_new)
    mask = (new_ids[:, :, None] == ids[:, None, :]).logical_and(causal).unsqueeze(1)
    return Documents(new_ids, mask, None, 0), document_positions(ids)[:, total - n_new :]
