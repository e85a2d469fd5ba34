"""How loud each attention variant is at initialisation: the RMS of the attention sublayer's output (after
o_proj, what it adds to the residual stream), mean over layers, next to the token embedding's RMS.

Measured on the study's own model configs (seed 0, random tokens): DIFF V1's per-head RMSNorm starts at
weight 1 and normalises each head's output to RMS ~1 before (1 - lambda_init) and o_proj, where the
baseline's and DIFF V2's heads output an average of values that are themselves ~init_std * sqrt(D) times
the (small) embedding. So V1 writes a far larger update into a residual stream that holds ~init_std.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

SEQUENCES, TOKENS = 8, 128


def attention_output_rms(model_config: dict[str, object]) -> tuple[float, float]:
    """(attention output RMS mean over layers, token embedding RMS) at init for a flattened `model.*`
    config (as a trial's config.yaml holds it)."""
    from launch.study import model_config_of
    from model import Transformer

    cfg = model_config_of(model_config)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    tokens = torch.randint(0, cfg.vocab_size, (SEQUENCES, min(TOKENS, cfg.max_seq_len)))
    rms: list[torch.Tensor] = []
    hooks = [
        block.attention.register_forward_hook(lambda m, a, out: rms.append(out.float().pow(2).mean().sqrt()))
        for block in model.layers
    ]
    with torch.no_grad():
        model(tokens)
        embedding = model.tok_embeddings(tokens).float().pow(2).mean().sqrt().item()
    for hook in hooks:
        hook.remove()
    return torch.stack(rms).mean().item(), embedding


def init_scale_note(configs: Sequence[dict[str, object]]) -> str:
    """One markdown paragraph: each variant's attention output RMS at init, and V1's multiple of the
    baseline's; `configs` holds one flattened config per variant (model.variant names it)."""
    measured = {str(c["model.variant"]): attention_output_rms(c) for c in configs}
    parts = [f"{name} {out:.4f}" for name, (out, _) in measured.items()]
    embedding = next(iter(measured.values()))[1]
    note = (
        "**DIFF V1 at init.** Attention output RMS (after o_proj, mean over layers, seed 0): "
        f"{', '.join(parts)}; token embedding RMS {embedding:.4f}."
    )
    if "diff_v1" in measured and "baseline" in measured:
        ratio = measured["diff_v1"][0] / measured["baseline"][0]
        note += (
            f" DIFF V1's is {ratio:.0f}x the baseline's: its per-head RMSNorm (weight 1 at init) rescales"
            " each head's output to RMS ~1 before the (1 - lambda_init) factor and o_proj, where the"
            " baseline's head outputs an average of small values. The sources initialise that norm the"
            " same way (unilm Diff-Transformer/rms_norm.py: weight = ones; multihead_flashdiff_*.py: subln,"
            " then `* (1 - lambda_init)`, out_proj an nn.Linear with no init of its own; neither that code"
            " nor the paper's facts in the model spec give another init for the sub-norm or the output),"
            " so this framework's V1 keeps it and offers no option; what it costs at this scale shows in"
            " V1's curves below."
        )
    return note
