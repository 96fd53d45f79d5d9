"""The fusions the HuggingFace patch and the Decoder can serve a GPT-NeoX layer with.
No transformers import: the Decoder checks its argument before importing the patch."""

from __future__ import annotations

#: ``attention_block``: the attention branch of a decode step with a static cache
#: (:func:`clusterfusion.attention_block`). The MLP branch gets the first of the
#: requested MLP fusions that can serve it, most fused first: ``mlp_block``:
#: LayerNorm, up projection, GELU, down projection and both residual adds
#: (:func:`clusterfusion.mlp_block_residual`); ``mlp_down``: the down projection,
#: its bias and the residual adds (:func:`clusterfusion.mlp_down_residual`).
FUSIONS = ("attention_block", "mlp_block", "mlp_down")
ATTENTION_FUSIONS = ("attention_block",)
MLP_FUSIONS = ("mlp_block", "mlp_down")


def parse_fusions(fusions, caller: str) -> tuple[str, ...]:
    """``None`` (none), ``"auto"`` (all) or a name or selection of :data:`FUSIONS`, most fused first."""
    if fusions is None:
        return ()
    if isinstance(fusions, str) and fusions == "auto":
        return FUSIONS
    names = (fusions,) if isinstance(fusions, str) else tuple(fusions) if isinstance(fusions, (tuple, list)) else None
    if not names or any(not isinstance(f, str) or f not in FUSIONS for f in names):
        raise ValueError(f"{caller}: argument 'fusions' must be None, \"auto\" or a selection of {FUSIONS}; got {fusions!r}")
    return tuple(f for f in FUSIONS if f in names)
