"""The fusions the HuggingFace patch and the Decoder can serve a GPT-NeoX layer with.
No transformers import: the Decoder checks its argument before importing the patch."""

from __future__ import annotations

#: Each fusion is named after the op that serves it. ``attention_block``: the
#: attention branch of a decode step with a static cache
#: (:func:`clusterfusion.attention_block`). The MLP branch gets the first of the
#: requested MLP fusions that can serve it, most fused first:
#: ``mlp_block_residual``: LayerNorm, up projection, GELU, down projection and
#: both residual adds (:func:`clusterfusion.mlp_block_residual`);
#: ``mlp_down_residual``: the down projection, its bias and the residual adds
#: (:func:`clusterfusion.mlp_down_residual`).
FUSIONS = ("attention_block", "mlp_block_residual", "mlp_down_residual")
ATTENTION_FUSIONS = ("attention_block",)
MLP_FUSIONS = ("mlp_block_residual", "mlp_down_residual")
#: Former names of the MLP fusions, still accepted: each stands for the fusion it names.
FUSION_ALIASES = {"mlp_block": "mlp_block_residual", "mlp_down": "mlp_down_residual"}


def parse_fusions(fusions, caller: str, none_allowed: bool = True) -> tuple[str, ...]:
    """``None`` (none), ``"auto"`` (all) or a name or selection of :data:`FUSIONS`,
    as their names in :data:`FUSIONS`, most fused first. The former names in
    :data:`FUSION_ALIASES` (``"mlp_block"``, ``"mlp_down"``) are accepted for the
    fusions they name. ``none_allowed=False``: ``None`` is rejected (a caller that needs
    at least one fusion)."""
    if fusions is None and none_allowed:
        return ()
    if isinstance(fusions, str) and fusions == "auto":
        return FUSIONS
    names = (fusions,) if isinstance(fusions, str) else tuple(fusions) if isinstance(fusions, (tuple, list)) else None
    if not names or any(not isinstance(f, str) or FUSION_ALIASES.get(f, f) not in FUSIONS for f in names):
        allowed = "None, \"auto\"" if none_allowed else "\"auto\""
        raise ValueError(f"{caller}: argument 'fusions' must be {allowed} or a selection of {FUSIONS}; got {fusions!r}")
    chosen = {FUSION_ALIASES.get(f, f) for f in names}
    return tuple(f for f in FUSIONS if f in chosen)
