"""Why a fusion cannot serve a layer, for the reasons that hold in every model family:
training and autograd, hooks and accelerate, a bypassed module that is not the plain
one (an adapter, a forward of its own), weights the op rejects (asked of its backend
once per layout), a call the attention block cannot take (no static cache layer of
batch 1); which fusion serves each branch, and what runs instead, said once."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
from transformers.cache_utils import StaticLayer

from .._fusions import MLP_FUSIONS
from ..ops import (
    attention_block_unsupported_reason,
    mlp_block_residual_unsupported_reason,
    mlp_down_residual_unsupported_reason,
)

# ---- the layer and its modules ------------------------------------------------------


def autograd_or_training(layer: torch.nn.Module, hidden_states: torch.Tensor) -> bool:
    """Dropout is live, or autograd needs this layer's gradients: HuggingFace's forward is the right one."""
    if layer.training:
        return True
    if not torch.is_grad_enabled():
        return False
    return hidden_states.requires_grad or any(p.requires_grad for p in layer.parameters())


def layer_reason(layer: torch.nn.Module) -> str | None:
    """Why no fusion can serve `layer` whatever its family: hooks around it; None if one may."""
    if hasattr(layer, "_hf_hook"):
        return "accelerate hook on the layer (offload or device map)"
    module_hooks = torch.nn.modules.module
    if module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks:
        return "global module hooks are registered"
    return None


def _module_reason(name: str, module: torch.nn.Module, expected: type) -> str | None:
    """Why a fused forward may not bypass `module` (named `name` in messages), which
    should be a plain `expected`, or None."""
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


def modules_reason(modules) -> str | None:
    """The first reason one of `modules` ((name, module, expected type) each) may not be bypassed, or None."""
    for name, module, expected in modules:
        reason = _module_reason(name, module, expected)
        if reason is not None:
            return reason
    return None


# ---- the weights ----------------------------------------------------------------------

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


def _op_reason(fusion: str, weights: list[torch.Tensor], head_dim: int | None) -> str | None:
    """The op's own answer for its weights, given in its argument order (a block
    op's LayerNorm weight first, which its query does not take)."""
    if fusion == "attention_block":
        _, qkv, dense = weights
        return attention_block_unsupported_reason(qkv, dense, head_dim)
    if fusion == "mlp_block_residual":
        _, up, down = weights
        return mlp_block_residual_unsupported_reason(up, down)
    (down,) = weights
    return mlp_down_residual_unsupported_reason(down)


@torch.compiler.disable
def _ask_backend(fusion: str, weights: dict[str, torch.Tensor], head_dim: int | None) -> str | None:
    for weight in weights.values():
        if weight.device.type not in ("cpu", "cuda"):
            return f"device {weight.device} (the ops run on CUDA and CPU)"
    # torch.export traces with fake weights: the backend answers for real ones of their layout.
    with unset_fake_temporarily():
        return _op_reason(fusion, [_real_stand_in(weight) for weight in weights.values()], head_dim)


def _plain(weight: torch.Tensor) -> bool:
    """A parameter or tensor the ops read as it is (torch.export traces with fake
    stand-ins of the same layout, which its graph then gives the ops)."""
    return type(weight) in (torch.nn.Parameter, torch.Tensor, FakeTensor)


def weight_reason(fusion: str, weights: dict[str, torch.Tensor], head_dim: int | None = None) -> str | None:
    """Why `fusion`'s op rejects its weights and head size, or None. `weights`: the
    weights the op takes, in its argument order, by the name of their module."""
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


# ---- which fusion serves each branch -------------------------------------------------------


class FamilyReasons(NamedTuple):
    """A model family's reasons a fusion cannot serve a layer as it is now, whatever
    the call: each a function of the layer that returns the reason or None."""

    #: why no fusion can serve the layer
    layer: Callable[[torch.nn.Module], str | None]
    #: why the attention block cannot, beyond `layer`
    attention: Callable[[torch.nn.Module], str | None]
    #: why no MLP fusion can, beyond `layer`
    mlp: Callable[[torch.nn.Module], str | None]
    #: MLP fusion -> why it cannot, beyond `mlp`
    by_mlp_fusion: dict[str, Callable[[torch.nn.Module], str | None]]


def static_reasons(
    family: FamilyReasons, layer: torch.nn.Module, fusions: tuple[str, ...]
) -> tuple[dict[str, str | None], str | None]:
    """Whether each of `fusions` may serve `layer` as it is now, whatever the call:
    {fusion: reason or None}, and the MLP fusion that serves the MLP branch (None:
    none), the first of the requested ones that can (no reason is asked of those after it)."""
    shared = family.layer(layer)
    reasons: dict[str, str | None] = {}
    if "attention_block" in fusions:
        reasons["attention_block"] = shared or family.attention(layer)
    mlp_shared = shared or family.mlp(layer)
    mlp = None
    for fusion in (f for f in fusions if f in MLP_FUSIONS):
        reason = mlp_shared or family.by_mlp_fusion[fusion](layer)
        reasons[fusion] = reason
        if reason is None:
            mlp = fusion
            break
    return reasons, mlp


# ---- the call ---------------------------------------------------------------------------

_MASK_DTYPES = (torch.bool, torch.float32, torch.float16, torch.bfloat16)


def static_cache_layer(layer_past, index: int | None, hidden_states, attention_mask, position_embeddings):
    """The static cache layer the attention block appends to on this call of the
    decoder layer with cache index `index`, or None and why not (no reason: a
    prefill or a cache's first call, which HuggingFace's attention serves as
    expected: it lays the cache out)."""
    if hidden_states.dim() != 3 or hidden_states.shape[1] != 1:
        return None, None
    if hidden_states.shape[0] != 1:
        return None, f"batch {hidden_states.shape[0]} (the attention block decodes batch 1)"
    layers = getattr(layer_past, "layers", None)
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


# ---- what runs instead ---------------------------------------------------------------------

_FUSION_OPS = {"attention_block": "the attention block op", "mlp_block_residual": "the MLP block op",
               "mlp_down_residual": "the MLP-down op"}


def fallbacks(reasons: dict[str, str | None], mlp: str | None) -> list[tuple[str, str]]:
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


# The (reason, what runs instead) pairs already said in a warning.
_WARNED: set = set()


def mark_warned(said) -> None:
    """Records (reason, what runs instead) pairs said elsewhere (patch_model's
    summary), so that :func:`warn_once` does not say them again."""
    _WARNED.update(said)


@torch.compiler.disable
def warn_once(reason: str, runs: str) -> None:
    """Warns, once per (reason, runs), that a patched layer runs `runs` for `reason`."""
    if (reason, runs) not in _WARNED:
        _WARNED.add((reason, runs))
        warnings.warn(f"clusterfusion.hf: a patched layer runs {runs}: {reason}", stacklevel=3)
