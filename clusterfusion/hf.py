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
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import types
import warnings

import torch
import transformers
from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
from transformers.activations import GELUActivation
from transformers.cache_utils import StaticLayer
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXAttention, GPTNeoXLayer, GPTNeoXMLP

from ._fusions import ATTENTION_FUSIONS, FUSIONS, MLP_FUSIONS, parse_fusions
from .ops import (
    attention_block,
    attention_block_unsupported_reason,
    mlp_block_residual,
    mlp_block_residual_unsupported_reason,
    mlp_down_residual,
    mlp_down_residual_unsupported_reason,
)

__all__ = ["patch_model", "unpatch_model", "patched", "is_patched", "PatchReport", "FUSIONS"]

# GPTNeoXLayer.forward as this module was written against (transformers 5.x).
_EXPECTED_SIGNATURE = (
    "hidden_states",
    "attention_mask",
    "position_ids",
    "use_cache",
    "layer_past",
    "position_embeddings",
    "kwargs",
)
# In a patched layer's __dict__: the instance `forward` it had before patching, or None.
_PREVIOUS_FORWARD = "_clusterfusion_previous_forward"
# In a patched layer's __dict__: the fusions it may use, most fused first.
_LAYER_FUSIONS = "_clusterfusion_fusions"


# GPTNeoXAttention.forward and StaticLayer as the attention fusion was written against.
_EXPECTED_ATTENTION_SIGNATURE = ("hidden_states", "attention_mask", "layer_past", "position_embeddings", "kwargs")
# Attributes of a StaticLayer before its lazy initialization (keys and values come with it).
_EXPECTED_STATIC_LAYER = ("cumulative_length", "max_cache_len", "is_initialized", "lazy_initialization")


def _check_transformers_layer(fusions: tuple[str, ...]) -> None:
    params = tuple(inspect.signature(GPTNeoXLayer.forward).parameters)[1:]
    if params != _EXPECTED_SIGNATURE:
        raise RuntimeError(
            f"clusterfusion.hf: GPTNeoXLayer.forward in transformers {transformers.__version__} takes "
            f"{params}; this integration was written for {_EXPECTED_SIGNATURE}. "
            "Its fused forward would no longer match HuggingFace's, so nothing was patched."
        )
    if not set(fusions) & set(ATTENTION_FUSIONS):
        return
    attention = tuple(inspect.signature(GPTNeoXAttention.forward).parameters)[1:]
    probe = StaticLayer(max_cache_len=1)
    update = tuple(inspect.signature(StaticLayer.update).parameters)[1:3]
    static = all(hasattr(probe, a) for a in _EXPECTED_STATIC_LAYER)
    if (attention != _EXPECTED_ATTENTION_SIGNATURE or update != ("key_states", "value_states") or not static
            or not isinstance(probe.cumulative_length, torch.Tensor)):
        raise RuntimeError(
            f"clusterfusion.hf: transformers {transformers.__version__} changed GPTNeoXAttention.forward "
            f"({attention}) or its static cache layer (StaticLayer, expected a device-side 'cumulative_length' "
            f"advanced by update(key_states, value_states)); the attention_block fusion was written for "
            f"{_EXPECTED_ATTENTION_SIGNATURE} and would no longer keep the cache's bookkeeping, so nothing was "
            "patched. Patch with fusions=(\"mlp_block_residual\",) to fuse the MLP branch only."
        )


# ---- when the op may serve a layer ------------------------------------------------

_MISSING = object()
# Reason (or None) by the weight properties the op's checks depend on, so the
# backend is asked once per layout rather than on every call.
_WEIGHT_REASONS: dict = {}


def _real_stand_in(weight: torch.Tensor) -> torch.Tensor:
    """A real, uninitialized tensor of a fake weight's layout (the backends' checks
    read the layout, never the values); other weights as they are."""
    if not isinstance(weight, FakeTensor):
        return weight
    size = weight.storage_offset() + sum((n - 1) * s for n, s in zip(weight.shape, weight.stride())) + 1
    storage = torch.empty(size, dtype=weight.dtype, device=weight.device)
    return storage.as_strided(weight.shape, weight.stride(), weight.storage_offset())


@torch.compiler.disable
def _ask_backend(fusion: str, weights: dict[str, torch.Tensor], head_dim: int | None) -> str | None:
    for weight in weights.values():
        if weight.device.type not in ("cpu", "cuda"):
            return f"device {weight.device} (the ops run on CUDA and CPU)"
    # torch.export traces with fake weights: the backend answers for real ones of their layout.
    with unset_fake_temporarily():
        weights = {name: _real_stand_in(weight) for name, weight in weights.items()}
        if fusion == "attention_block":
            return attention_block_unsupported_reason(weights["query_key_value"], weights["dense"], head_dim)
        if fusion == "mlp_block_residual":
            return mlp_block_residual_unsupported_reason(weights["dense_h_to_4h"], weights["dense_4h_to_h"])
        return mlp_down_residual_unsupported_reason(weights["dense_4h_to_h"])


def _plain(weight: torch.Tensor) -> bool:
    """A parameter or tensor the ops read as it is (torch.export traces with fake
    stand-ins of the same layout, which its graph then gives the ops)."""
    return type(weight) in (torch.nn.Parameter, torch.Tensor, FakeTensor)


def _weight_reason(fusion: str, weights: dict[str, torch.Tensor], head_dim: int | None = None) -> str | None:
    """Why `fusion`'s op rejects these weights (by the name of their module) and head size, or None."""
    for name, weight in weights.items():
        if weight.device.type == "meta":
            return "weights not materialized (meta device: offloaded or not loaded)"
        if not _plain(weight):
            return f"{name}'s weight is a {type(weight).__name__} (quantized or wrapped)"
    # Under torch.compile the storage offset is not traceable; parameters start
    # their storage, and the eager calls and patch_model fill the cache.
    key = (fusion, head_dim) + tuple(
        (w.device, w.dtype, tuple(w.shape), w.stride(), 0 if torch.compiler.is_compiling() else w.storage_offset())
        for w in weights.values()
    )
    reason = _WEIGHT_REASONS.get(key, _MISSING)
    if reason is _MISSING:
        reason = _WEIGHT_REASONS[key] = _ask_backend(fusion, weights, head_dim)
    return reason


def _module_reason(name: str, module: torch.nn.Module, expected: type) -> str | None:
    """Why the fused forward may not bypass `module`, or None."""
    if hasattr(module, "_hf_hook"):
        return f"accelerate hook on {name} (offload or device map)"
    kind = type(module)
    if kind.forward is not expected.forward:
        if kind.__module__.startswith("peft."):
            adapter = "LoRA adapter" if ".lora" in kind.__module__ else f"PEFT {kind.__name__}"
            return f"{adapter} on {name}"
        return f"{name} is a {kind.__module__}.{kind.__name__}, not a plain {expected.__name__}"
    if "forward" in module.__dict__:
        return f"{name}'s forward is replaced on the instance"
    if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks:
        return f"hooks on {name}"
    return None


def _modules_reason(modules) -> str | None:
    """The first reason (name, module, expected type) forbids bypassing a module, or None."""
    for name, module, expected in modules:
        reason = _module_reason(name, module, expected)
        if reason is not None:
            return reason
    return None


def _layer_reason(layer: GPTNeoXLayer) -> str | None:
    """Why no fusion can serve `layer` as it is now, whatever the call; None if one may."""
    if not layer.use_parallel_residual:
        return "no parallel residual (use_parallel_residual=False)"
    if hasattr(layer, "_hf_hook"):
        return "accelerate hook on the layer (offload or device map)"
    module_hooks = torch.nn.modules.module
    if module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks:
        return "global module hooks are registered"
    return None


def _mlp_reason(layer: GPTNeoXLayer) -> str | None:
    """Why no MLP fusion can serve `layer` beyond what _layer_reason says; None if one may."""
    mlp = layer.mlp
    return _modules_reason((
        ("mlp", mlp, GPTNeoXMLP),
        ("dense_4h_to_h", mlp.dense_4h_to_h, torch.nn.Linear),
        ("post_attention_dropout", layer.post_attention_dropout, torch.nn.Dropout),
        ("post_mlp_dropout", layer.post_mlp_dropout, torch.nn.Dropout),
    ))


def _block_reason(layer: GPTNeoXLayer) -> str | None:
    """Why the MLP block op cannot serve `layer` beyond what _mlp_reason says; None if it can."""
    mlp, norm = layer.mlp, layer.post_attention_layernorm
    for name, module, expected in (
        ("post_attention_layernorm", norm, torch.nn.LayerNorm),
        ("dense_h_to_4h", mlp.dense_h_to_4h, torch.nn.Linear),
        ("act", mlp.act, GELUActivation),
    ):
        reason = _module_reason(name, module, expected)
        if reason is not None:
            return reason
    if mlp.act.act is not torch.nn.functional.gelu:
        return "the activation is not the exact GELU (hidden_act=\"gelu\")"
    if norm.weight is None or tuple(norm.normalized_shape) != (mlp.dense_h_to_4h.in_features,):
        return "post_attention_layernorm is not an affine LayerNorm over the hidden size"
    return _weight_reason(
        "mlp_block_residual",
        {"post_attention_layernorm": norm.weight, "dense_h_to_4h": mlp.dense_h_to_4h.weight,
         "dense_4h_to_h": mlp.dense_4h_to_h.weight},
    )


def _down_reason(layer: GPTNeoXLayer) -> str | None:
    """Why the MLP-down op cannot serve `layer` beyond what _mlp_reason says; None if it can."""
    return _weight_reason("mlp_down_residual", {"dense_4h_to_h": layer.mlp.dense_4h_to_h.weight})


def _attention_reason(layer: GPTNeoXLayer) -> str | None:
    """Why the attention block op cannot serve `layer` beyond what _layer_reason says,
    whatever the call; None if it may."""
    attention, norm = layer.attention, layer.input_layernorm
    reason = _modules_reason((
        ("attention", attention, GPTNeoXAttention),
        ("query_key_value", attention.query_key_value, torch.nn.Linear),
        ("dense", attention.dense, torch.nn.Linear),
        ("input_layernorm", norm, torch.nn.LayerNorm),
        ("post_attention_dropout", layer.post_attention_dropout, torch.nn.Dropout),
    ))
    if reason is not None:
        return reason
    if norm.weight is None or tuple(norm.normalized_shape) != (attention.query_key_value.in_features,):
        return "input_layernorm is not an affine LayerNorm over the hidden size"
    if attention.scaling != attention.head_size**-0.5:
        return f"attention scaling {attention.scaling} is not head_size ** -0.5"
    return _weight_reason(
        "attention_block",
        {"input_layernorm": norm.weight, "query_key_value": attention.query_key_value.weight,
         "dense": attention.dense.weight},
        attention.head_size,
    )


_MASK_DTYPES = (torch.bool, torch.float32, torch.float16, torch.bfloat16)


def _attention_call(layer, hidden_states, attention_mask, layer_past, position_embeddings):
    """The static cache layer the attention block appends to on this call, or None
    and why not (no reason: a prefill or a cache's first call, which HuggingFace's
    attention serves as expected: it lays the cache out)."""
    if hidden_states.dim() != 3 or hidden_states.shape[1] != 1:
        return None, None
    if hidden_states.shape[0] != 1:
        return None, f"batch {hidden_states.shape[0]} (the attention block decodes batch 1)"
    layers = getattr(layer_past, "layers", None)
    index = layer.attention.layer_idx
    if not isinstance(layers, list) or index is None or index >= len(layers):
        return None, f"no per-layer cache ({type(layer_past).__name__}; the attention block needs a StaticCache)"
    cache = layers[index]
    if type(cache) is not StaticLayer:
        return None, f"the cache layer is a {type(cache).__name__} (the attention block needs a StaticCache)"
    if getattr(layer_past, "offloading", False):
        return None, "an offloading cache (its update moves layers between devices on streams of its own)"
    if not cache.is_initialized:
        return None, None
    if cache.keys.device != hidden_states.device:
        return None, f"the cache layer is on {cache.keys.device}, the hidden states on {hidden_states.device}"
    if cache.keys.shape[0] != 1:
        return None, f"a static cache for batch {cache.keys.shape[0]} (the attention block decodes batch 1)"
    if position_embeddings is None:
        return None, "no position embeddings were passed to the layer"
    if attention_mask is not None and (
        not isinstance(attention_mask, torch.Tensor) or attention_mask.dtype not in _MASK_DTYPES
        or attention_mask.shape[-1] != cache.max_cache_len or attention_mask.numel() != cache.max_cache_len
    ):
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        return None, f"an attention mask of shape {shape} (the attention block takes one row over the cache)"
    return cache, None


_MLP_REASONS = {"mlp_block_residual": _block_reason, "mlp_down_residual": _down_reason}
_FUSION_OPS = {"attention_block": "the attention block op", "mlp_block_residual": "the MLP block op",
               "mlp_down_residual": "the MLP-down op"}


def _static_reasons(layer: GPTNeoXLayer, fusions: tuple[str, ...]) -> tuple[dict[str, str | None], str | None]:
    """Whether each of `fusions` may serve `layer` as it is now, whatever the call:
    {fusion: reason or None}, and the MLP fusion that serves the MLP branch (None: none)."""
    shared = _layer_reason(layer)
    reasons: dict[str, str | None] = {}
    if "attention_block" in fusions:
        reasons["attention_block"] = shared or _attention_reason(layer)
    mlp_shared = shared or _mlp_reason(layer)
    mlp = None
    for fusion in (f for f in fusions if f in MLP_FUSIONS):
        reason = mlp_shared or _MLP_REASONS[fusion](layer)
        reasons[fusion] = reason
        if reason is None:
            mlp = fusion
            break
    return reasons, mlp


def _autograd_or_training(layer: GPTNeoXLayer, hidden_states: torch.Tensor) -> bool:
    """Dropout is live, or autograd needs this layer's gradients: HuggingFace's forward is the right one."""
    if layer.training:
        return True
    if not torch.is_grad_enabled():
        return False
    return hidden_states.requires_grad or any(p.requires_grad for p in layer.parameters())


_WARNED: set = set()


@torch.compiler.disable
def _warn_once(reason: str, runs: str) -> None:
    if (reason, runs) not in _WARNED:
        _WARNED.add((reason, runs))
        warnings.warn(f"clusterfusion.hf: a patched layer runs {runs}: {reason}", stacklevel=3)


def _fallbacks(reasons: dict[str, str | None], mlp: str | None) -> list[tuple[str, str]]:
    """(reason, what runs instead) for each requested fusion that cannot serve a layer."""
    attention_served = reasons.get("attention_block", "") is None
    out = []
    for fusion, reason in reasons.items():
        if reason is None:
            continue
        if not attention_served and mlp is None:
            runs = "HuggingFace's forward"
        elif fusion in MLP_FUSIONS:
            runs = _FUSION_OPS[mlp] if mlp is not None else "HuggingFace's MLP branch"
        else:
            runs = "HuggingFace's attention"
        out.append((reason, runs))
    return out


# ---- the patched forward ----------------------------------------------------------


def _huggingface_forward(layer: GPTNeoXLayer, *args, **kwargs):
    """The forward the layer had before patching (HuggingFace's, or another library's
    wrapper), called directly: torch.compile traces it without a graph break."""
    previous = layer.__dict__.get(_PREVIOUS_FORWARD)
    if previous is not None:
        return previous(*args, **kwargs)
    return type(layer).forward(layer, *args, **kwargs)


def _patched_forward(
    layer,
    hidden_states,
    attention_mask=None,
    position_ids=None,
    use_cache=False,
    layer_past=None,
    position_embeddings=None,
    **kwargs,
):
    """GPTNeoXLayer.forward (parallel residual) with its attention branch and its
    MLP branch (or the MLP's down projection, bias and residual adds) each done by
    a clusterfusion op where one computes what HuggingFace would; HuggingFace's
    code for a branch none serves, and its whole forward when neither is served."""
    cache, mlp = None, None
    if not _autograd_or_training(layer, hidden_states):
        fusions = layer.__dict__.get(_LAYER_FUSIONS, FUSIONS)
        reasons, mlp = _static_reasons(layer, fusions)
        for reason, runs in _fallbacks(reasons, mlp):
            _warn_once(reason, runs)
        if "attention_block" in reasons and reasons["attention_block"] is None:
            cache, reason = _attention_call(layer, hidden_states, attention_mask, layer_past, position_embeddings)
            if reason is not None:
                _warn_once(reason, "HuggingFace's attention" if mlp is not None else "HuggingFace's forward")
    if cache is None and mlp is None:
        return _huggingface_forward(
            layer, hidden_states, attention_mask, position_ids, use_cache, layer_past, position_embeddings, **kwargs
        )
    if cache is not None:
        attention, norm = layer.attention, layer.input_layernorm
        qkv, dense = attention.query_key_value, attention.dense
        cos, sin = position_embeddings
        attn_output = attention_block(
            hidden_states, norm.weight, norm.bias, qkv.weight, qkv.bias, dense.weight, dense.bias, cos, sin,
            cache.keys, cache.values, cache.cumulative_length, attention_mask, norm.eps,
        )
        cache.cumulative_length.add_(1)  # as StaticLayer.update advances it
    else:
        attn_output, _ = layer.attention(
            layer.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            layer_past=layer_past,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
    mlp_module, norm = layer.mlp, layer.post_attention_layernorm
    up, down = mlp_module.dense_h_to_4h, mlp_module.dense_4h_to_h
    if mlp == "mlp_block_residual":
        return mlp_block_residual(
            hidden_states, attn_output, norm.weight, norm.bias, up.weight, up.bias, down.weight, down.bias, norm.eps
        )
    if mlp == "mlp_down_residual":
        intermediate = mlp_module.act(up(norm(hidden_states)))
        return mlp_down_residual(hidden_states, attn_output, intermediate, down.weight, down.bias)
    attn_output = layer.post_attention_dropout(attn_output)
    mlp_output = layer.post_mlp_dropout(mlp_module(norm(hidden_states)))
    return mlp_output + attn_output + hidden_states


def _is_patched_forward(forward) -> bool:
    return isinstance(forward, functools.partial) and forward.func is _patched_forward


# ---- public API ----------------------------------------------------------------------


def _layers(model: torch.nn.Module) -> list[GPTNeoXLayer]:
    layers = [m for m in model.modules() if isinstance(m, GPTNeoXLayer)]
    if not layers:
        raise TypeError(
            f"clusterfusion.hf: argument 'model' ({type(model).__name__}) holds no GPTNeoXLayer; "
            "expected a GPTNeoXForCausalLM or GPTNeoXModel"
        )
    return layers


def is_patched(layer: torch.nn.Module) -> bool:
    return _PREVIOUS_FORWARD in layer.__dict__


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
    chosen = parse_fusions(fusions, "clusterfusion.hf.patch_model")
    if not chosen:
        raise ValueError("clusterfusion.hf.patch_model: argument 'fusions' must name at least one fusion; got None")
    _check_transformers_layer(chosen)
    by_fusion: dict[str, list[int]] = {f: [] for f in chosen}
    skipped: dict[tuple[str, str], list[int]] = {}
    for index, layer in enumerate(_layers(model)):
        if layer.use_parallel_residual and not is_patched(layer):
            layer.__dict__[_PREVIOUS_FORWARD] = layer.__dict__.get("forward")
            layer.forward = functools.partial(_patched_forward, layer)
        layer.__dict__[_LAYER_FUSIONS] = chosen
        reasons, mlp = _static_reasons(layer, chosen)
        for fusion, reason in reasons.items():
            if reason is None:
                by_fusion[fusion].append(index)
        for reason, runs in dict.fromkeys(_fallbacks(reasons, mlp)):  # fusions may fail for the same reason
            skipped.setdefault((reason, runs), []).append(index)
    _WARNED.update(skipped)  # said here; the forward need not say it again
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
    restored = 0
    for layer in _layers(model):
        if not is_patched(layer):
            continue
        previous = layer.__dict__.pop(_PREVIOUS_FORWARD)
        layer.__dict__.pop(_LAYER_FUSIONS, None)
        if _is_patched_forward(layer.__dict__.get("forward")):
            if previous is None:
                del layer.forward
            else:
                layer.forward = previous
        elif _is_patched_forward(layer.__dict__.get("_old_forward")):
            layer._old_forward = previous if previous is not None else types.MethodType(type(layer).forward, layer)
        restored += 1
    return restored


@contextlib.contextmanager
def patched(model: torch.nn.Module, fusions="auto"):
    """Context manager: :func:`patch_model` on entry (yields its report), :func:`unpatch_model` on exit."""
    served = patch_model(model, fusions)
    try:
        yield served
    finally:
        unpatch_model(model)


def _ranges(indices: list[int]) -> str:
    spans: list[list[int]] = []
    for i in indices:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
