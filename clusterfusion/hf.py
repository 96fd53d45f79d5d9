"""HuggingFace GPT-NeoX integration: run each decoder layer's MLP down projection,
its bias and the parallel residual with :func:`clusterfusion.mlp_down_residual`.

    from clusterfusion.hf import patch_model, unpatch_model, patched

    patch_model(model)            # model: GPTNeoXForCausalLM or GPTNeoXModel
    model.generate(...)           # eager, dynamic or static cache, CUDA graphs, torch.compile
    unpatch_model(model)

    with patched(model):          # or scoped
        ...

Everything else in the layer (layer norms, attention, the up projection and
GELU) stays HuggingFace's own code. The patch never changes what the model
computes beyond rounding: a patched layer decides on every call whether the op
can serve it, and runs HuggingFace's forward instead

* in training mode, and whenever autograd needs the layer's gradients (grad
  mode on and the input or the down projection's parameters require grad);
* when a module the fused forward bypasses (``mlp``, ``mlp.dense_4h_to_h``, the
  two dropouts) carries hooks, an adapter (a PEFT LoRA wrapper), an accelerate
  hook, a forward of its own, or is not the plain HuggingFace / ``nn.Linear``
  module; when the layer itself carries an accelerate hook;
* when the down projection's weight is one the op rejects (dtype, device,
  layout) or not materialized (meta, offloaded).

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
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXLayer, GPTNeoXMLP

from .ops import mlp_down_residual, mlp_down_residual_unsupported_reason

__all__ = ["patch_model", "unpatch_model", "patched", "is_patched"]

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


def _check_transformers_layer() -> None:
    params = tuple(inspect.signature(GPTNeoXLayer.forward).parameters)[1:]
    if params != _EXPECTED_SIGNATURE:
        raise RuntimeError(
            f"clusterfusion.hf: GPTNeoXLayer.forward in transformers {transformers.__version__} takes "
            f"{params}; this integration was written for {_EXPECTED_SIGNATURE}. "
            "Its fused forward would no longer match HuggingFace's, so nothing was patched."
        )


# ---- when the op may serve a layer ------------------------------------------------

_MISSING = object()
# Reason (or None) by the weight properties the op's checks depend on, so the
# backend is asked once per layout rather than on every call.
_WEIGHT_REASONS: dict = {}


@torch.compiler.disable
def _ask_backend(weight: torch.Tensor) -> str | None:
    if weight.device.type not in ("cpu", "cuda"):
        return f"device {weight.device} (the op runs on CUDA and CPU)"
    return mlp_down_residual_unsupported_reason(weight)


def _weight_reason(weight: torch.Tensor) -> str | None:
    if weight.device.type == "meta":
        return "weights not materialized (meta device: offloaded or not loaded)"
    if type(weight) not in (torch.nn.Parameter, torch.Tensor):
        return f"dense_4h_to_h's weight is a {type(weight).__name__} (quantized or wrapped)"
    # Under torch.compile the storage offset is not traceable; parameters start
    # their storage, and the eager calls and patch_model fill the cache.
    offset = 0 if torch.compiler.is_compiling() else weight.storage_offset()
    key = (weight.device, weight.dtype, tuple(weight.shape), weight.stride(), offset)
    reason = _WEIGHT_REASONS.get(key, _MISSING)
    if reason is _MISSING:
        reason = _WEIGHT_REASONS[key] = _ask_backend(weight)
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


def _structural_reason(layer: GPTNeoXLayer) -> str | None:
    """Why the op cannot serve `layer` as it is now, whatever the call; None if it can."""
    if not layer.use_parallel_residual:
        return "no parallel residual (use_parallel_residual=False)"
    if hasattr(layer, "_hf_hook"):
        return "accelerate hook on the layer (offload or device map)"
    module_hooks = torch.nn.modules.module
    if module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks:
        return "global module hooks are registered"
    mlp = layer.mlp
    for name, module, expected in (
        ("mlp", mlp, GPTNeoXMLP),
        ("dense_4h_to_h", mlp.dense_4h_to_h, torch.nn.Linear),
        ("post_attention_dropout", layer.post_attention_dropout, torch.nn.Dropout),
        ("post_mlp_dropout", layer.post_mlp_dropout, torch.nn.Dropout),
    ):
        reason = _module_reason(name, module, expected)
        if reason is not None:
            return reason
    return _weight_reason(mlp.dense_4h_to_h.weight)


def _autograd_or_training(layer: GPTNeoXLayer, hidden_states: torch.Tensor) -> bool:
    """Dropout is live, or autograd needs this layer's gradients: HuggingFace's forward is the right one."""
    if layer.training:
        return True
    if not torch.is_grad_enabled():
        return False
    down = layer.mlp.dense_4h_to_h
    return hidden_states.requires_grad or down.weight.requires_grad or (down.bias is not None and down.bias.requires_grad)


_WARNED: set = set()


@torch.compiler.disable
def _warn_once(reason: str) -> None:
    if reason not in _WARNED:
        _WARNED.add(reason)
        warnings.warn(f"clusterfusion.hf: a patched layer runs HuggingFace's forward: {reason}", stacklevel=3)


# ---- the patched forward ----------------------------------------------------------


def _huggingface_forward(layer: GPTNeoXLayer):
    previous = layer.__dict__.get(_PREVIOUS_FORWARD)
    return previous if previous is not None else types.MethodType(type(layer).forward, layer)


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
    """GPTNeoXLayer.forward (parallel residual) with the MLP down projection, its
    bias and both residual adds done by one clusterfusion op, when the op can
    compute what HuggingFace would; HuggingFace's forward otherwise."""
    fallback = _autograd_or_training(layer, hidden_states)
    if not fallback:
        reason = _structural_reason(layer)
        if reason is not None:
            _warn_once(reason)
            fallback = True
    if fallback:
        return _huggingface_forward(layer)(
            hidden_states, attention_mask, position_ids, use_cache, layer_past, position_embeddings, **kwargs
        )
    attn_output, _ = layer.attention(
        layer.input_layernorm(hidden_states),
        attention_mask=attention_mask,
        position_ids=position_ids,
        layer_past=layer_past,
        use_cache=use_cache,
        position_embeddings=position_embeddings,
        **kwargs,
    )
    mlp = layer.mlp
    intermediate = mlp.act(mlp.dense_h_to_4h(layer.post_attention_layernorm(hidden_states)))
    down = mlp.dense_4h_to_h
    return mlp_down_residual(hidden_states, attn_output, intermediate, down.weight, down.bias)


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


def patch_model(model: torch.nn.Module) -> list[int]:
    """Routes each GPT-NeoX decoder layer's MLP down projection, bias and parallel
    residual through :func:`clusterfusion.mlp_down_residual` whenever the op can
    compute what HuggingFace would (see the module's documentation).

    Patches layer instances (not the class), so other models are unaffected, and
    keeps any forward another library installed on a layer (accelerate's, say),
    which :func:`unpatch_model` restores. Every layer with a parallel residual is
    patched; one warning line per reason names the layers the op cannot serve
    as the model is now (they run HuggingFace's code until that changes).
    Training mode is decided per call and is not reported. Patching twice is
    harmless.

    Returns:
        The indices of the layers the op serves as the model is now (in eval mode).

    Raises:
        TypeError: ``model`` holds no GPTNeoXLayer.
        RuntimeError: the installed transformers changed GPTNeoXLayer.forward.
    """
    _check_transformers_layer()
    served, skipped = [], {}
    for index, layer in enumerate(_layers(model)):
        if layer.use_parallel_residual and not is_patched(layer):
            layer.__dict__[_PREVIOUS_FORWARD] = layer.__dict__.get("forward")
            layer.forward = functools.partial(_patched_forward, layer)
        reason = _structural_reason(layer)
        if reason is None:
            served.append(index)
        else:
            skipped.setdefault(reason, []).append(index)
    _WARNED.update(skipped)  # said here; the forward need not say it again
    for reason, indices in skipped.items():
        warnings.warn(
            f"clusterfusion.hf: left {len(indices)} layer(s) {_ranges(indices)} to HuggingFace: {reason}",
            stacklevel=2,
        )
    return served


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
def patched(model: torch.nn.Module):
    """Context manager: :func:`patch_model` on entry, :func:`unpatch_model` on exit."""
    served = patch_model(model)
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
