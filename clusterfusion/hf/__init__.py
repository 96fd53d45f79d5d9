"""HuggingFace GPT-NeoX integration: run each decoder layer's attention and MLP
branches with clusterfusion's fused ops.

    from clusterfusion.hf import patch_model, unpatch_model, patched

    patch_model(model)            # model: GPTNeoXForCausalLM or GPTNeoXModel
    model.generate(...)           # eager, dynamic or static cache, CUDA graphs, torch.compile
    unpatch_model(model)

    with patched(model, fusions=("mlp_down_residual",)):   # or scoped, with a choice of fusions
        ...

Three fusions, each named after the op that serves it (``fusions="auto"`` asks
for all; the former names ``mlp_block`` and ``mlp_down`` are accepted for the
last two):

* ``attention_block``: :func:`clusterfusion.attention_block`, the attention branch
  of a decode step (``input_layernorm``, ``query_key_value``, rotary embedding,
  the cache append, attention over the positions in use, ``dense``). It serves
  one new token of one sequence with a ``StaticCache``, and keeps the cache's
  bookkeeping as its own ``update`` would (the layer's device-side length
  advances by one); prefill, other caches and batches run HuggingFace's attention;
* ``mlp_block_residual``: :func:`clusterfusion.mlp_block_residual`, the whole
  parallel-residual MLP branch (``post_attention_layernorm``, ``dense_h_to_4h``,
  GELU, ``dense_4h_to_h`` and both residual adds);
* ``mlp_down_residual``: :func:`clusterfusion.mlp_down_residual`, the down
  projection, its bias and the residual adds (the rest of the branch stays
  HuggingFace's).

The MLP branch gets the most fused of the requested MLP fusions that can serve
it. The patch never changes what the model computes beyond rounding: a patched
layer decides on every call which fusions can serve it, and runs HuggingFace's
code for a branch none can serve (HuggingFace's whole forward when neither is served):

* in training mode, and whenever autograd needs the layer's gradients (grad
  mode on and the input or a parameter of the layer requires grad);
* when a module a fusion bypasses (``attention``, its linears, ``input_layernorm``;
  ``mlp``, its linears and activation, ``post_attention_layernorm``; the two
  dropouts) carries hooks, an adapter (a PEFT LoRA wrapper), an accelerate hook,
  a forward of its own, or is not the plain HuggingFace / ``torch.nn`` module;
  when the layer itself carries an accelerate hook; for ``mlp_block_residual``,
  also another activation than the exact GELU;
* when a weight is one the op rejects (dtype, device, layout) or not
  materialized (meta, offloaded).

So moving, casting, adding adapters or hooks, offloading or training after
patching all keep HuggingFace's behaviour. Patched models pickle and deep-copy
(and load patched; clusterfusion must be importable). Needs ``transformers``.

The package: this module (the public API), :mod:`.compat` (the installed
transformers against the APIs the patch was written for), :mod:`.eligibility`
(why a fusion cannot serve, for reasons of every model family, and what runs
instead), :mod:`.layer_patch` (the patch on one layer instance) and
:mod:`.gpt_neox` (what is GPT-NeoX's: its modules, its reasons, the patched forward).
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from .._fusions import FUSIONS, parse_fusions
from . import compat, eligibility, gpt_neox, layer_patch
from .layer_patch import is_patched

__all__ = ["patch_model", "unpatch_model", "patched", "is_patched", "PatchReport", "FUSIONS"]

# The forward's name in models pickled patched before clusterfusion.hf became a
# package: they load patched with it.
_patched_forward = gpt_neox.patched_forward


class PatchReport(list):
    """What :func:`patch_model` did: the indices of the layers a fusion serves as
    the model is now (in eval mode), as a list, and in :attr:`by_fusion` which
    fusions serve which of them (a key per requested fusion; ``attention_block``
    serves the decode steps with a ``StaticCache``)."""

    def __init__(self, by_fusion: dict[str, list[int]]):
        super().__init__(sorted({i for indices in by_fusion.values() for i in indices}))
        #: fusion name -> indices of the layers it serves
        self.by_fusion = by_fusion


def patch_model(model: torch.nn.Module, fusions="auto") -> PatchReport:
    """Routes each GPT-NeoX decoder layer's attention branch through the attention
    block op and its MLP branch through the most fused of the MLP fusions, where
    they compute what HuggingFace would (see the module's documentation).

    Patches layer instances (not the class), so other models are unaffected, and
    keeps any forward another library installed on a layer (accelerate's, say),
    which :func:`unpatch_model` restores. Every layer with a parallel residual is
    patched; one warning line per reason names the layers a requested fusion
    cannot serve as the model is now, and what runs them instead (a lesser
    fusion, or HuggingFace's code until that changes). Training mode is decided
    per call and is not reported, and so is what the attention block needs of a
    call (one new token with a ``StaticCache``): prefills run HuggingFace's
    attention without a warning. Patching again is harmless and takes the new ``fusions``.

    Args:
        model: a ``GPTNeoXForCausalLM`` or ``GPTNeoXModel``.
        fusions: ``"auto"`` (every fusion) or a name or selection of
            :data:`FUSIONS` (``"attention_block"``, ``"mlp_block_residual"``,
            ``"mlp_down_residual"``; the former names ``"mlp_block"`` and
            ``"mlp_down"`` stand for the last two).

    Returns:
        A :class:`PatchReport`: the served layers' indices, and which fusion serves
        each (keyed by the names in :data:`FUSIONS`).

    Raises:
        TypeError: ``model`` holds no GPTNeoXLayer.
        ValueError: ``fusions`` names no known fusion.
        RuntimeError: the installed transformers changed GPTNeoXLayer.forward, or (for
            ``attention_block``) GPTNeoXAttention.forward or its static cache layer.
    """
    chosen = parse_fusions(fusions, "clusterfusion.hf.patch_model", none_allowed=False)
    compat.check_gpt_neox(chosen)
    by_fusion: dict[str, list[int]] = {f: [] for f in chosen}
    skipped: dict[tuple[str, str], list[int]] = {}
    for index, layer in enumerate(gpt_neox.layers(model)):
        if gpt_neox.patchable(layer):
            layer_patch.install(layer, gpt_neox.patched_forward)
        layer_patch.set_fusions(layer, chosen)
        reasons, mlp = gpt_neox.static_reasons(layer, chosen)
        for fusion, reason in reasons.items():
            if reason is None:
                by_fusion[fusion].append(index)
        for reason, runs in dict.fromkeys(eligibility.fallbacks(reasons, mlp)):  # fusions may fail for the same reason
            skipped.setdefault((reason, runs), []).append(index)
    eligibility.mark_warned(skipped)  # said here; the forward need not say it again
    for (reason, runs), indices in skipped.items():
        warnings.warn(
            f"clusterfusion.hf: {len(indices)} layer(s) {_ranges(indices)} run {runs}: {reason}", stacklevel=2
        )
    return PatchReport(by_fusion)


def unpatch_model(model: torch.nn.Module) -> int:
    """Restores on every patched layer the forward it had before :func:`patch_model`
    (HuggingFace's, or the wrapper another library had installed); returns how many.

    When another library wrapped the patched forward afterwards (accelerate keeps
    the forward it wraps as ``_old_forward``), its wrapper stays and wraps what
    was there before patching instead.
    """
    return sum(layer_patch.restore(layer, gpt_neox.patched_forward) for layer in gpt_neox.layers(model))


@contextlib.contextmanager
def patched(model: torch.nn.Module, fusions="auto"):
    """Context manager: :func:`patch_model` on entry (yields its report), :func:`unpatch_model` on exit."""
    served = patch_model(model, fusions)
    try:
        yield served
    finally:
        unpatch_model(model)


def _ranges(indices: list[int]) -> str:
    """Layer indices as runs, for people: ``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    spans: list[list[int]] = []
    for i in indices:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
