"""HuggingFace GPT-NeoX integration: run each decoder layer's MLP down projection,
its bias and the parallel residual with :func:`clusterfusion.mlp_down_residual`.

    from clusterfusion.hf import patch_model, unpatch_model, patched

    patch_model(model)            # model: GPTNeoXForCausalLM or GPTNeoXModel
    model.generate(...)           # eager, dynamic or static cache, CUDA graphs
    unpatch_model(model)

    with patched(model):          # or scoped
        ...

Everything else in the layer (layer norms, attention, the up projection and
GELU) stays HuggingFace's own code. A layer the op cannot serve is left
untouched, with one warning line per reason. Needs ``transformers``.
"""

from __future__ import annotations

import contextlib
import inspect
import types
import warnings

import torch
import transformers
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXLayer

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
_PATCH_FLAG = "_clusterfusion_patched"


def _check_transformers_layer() -> None:
    params = tuple(inspect.signature(GPTNeoXLayer.forward).parameters)[1:]
    if params != _EXPECTED_SIGNATURE:
        raise RuntimeError(
            f"clusterfusion.hf: GPTNeoXLayer.forward in transformers {transformers.__version__} takes "
            f"{params}; this integration was written for {_EXPECTED_SIGNATURE}. "
            "Its fused forward would no longer match HuggingFace's, so nothing was patched."
        )


def _fused_forward(
    self,
    hidden_states,
    attention_mask=None,
    position_ids=None,
    use_cache=False,
    layer_past=None,
    position_embeddings=None,
    **kwargs,
):
    """GPTNeoXLayer.forward (parallel residual) with the MLP down projection, its
    bias and both residual adds done by one clusterfusion op."""
    if self.training:  # dropout is live: HuggingFace's forward is the right one
        return type(self).forward(
            self, hidden_states, attention_mask, position_ids, use_cache, layer_past, position_embeddings, **kwargs
        )
    attn_output, _ = self.attention(
        self.input_layernorm(hidden_states),
        attention_mask=attention_mask,
        position_ids=position_ids,
        layer_past=layer_past,
        use_cache=use_cache,
        position_embeddings=position_embeddings,
        **kwargs,
    )
    mlp = self.mlp
    intermediate = mlp.act(mlp.dense_h_to_4h(self.post_attention_layernorm(hidden_states)))
    down = mlp.dense_4h_to_h
    return mlp_down_residual(hidden_states, attn_output, intermediate, down.weight, down.bias)


def _unsupported_reason(layer: GPTNeoXLayer) -> str | None:
    if not layer.use_parallel_residual:
        return "no parallel residual (use_parallel_residual=False)"
    if layer.training and layer.post_mlp_dropout.p > 0:
        return f"training mode with hidden dropout {layer.post_mlp_dropout.p}"
    weight = layer.mlp.dense_4h_to_h.weight
    if weight.device.type not in ("cpu", "cuda"):
        return f"device {weight.device} (the op runs on CUDA and CPU)"
    return mlp_down_residual_unsupported_reason(weight)


def _layers(model: torch.nn.Module) -> list[GPTNeoXLayer]:
    layers = [m for m in model.modules() if isinstance(m, GPTNeoXLayer)]
    if not layers:
        raise TypeError(
            f"clusterfusion.hf: argument 'model' ({type(model).__name__}) holds no GPTNeoXLayer; "
            "expected a GPTNeoXForCausalLM or GPTNeoXModel"
        )
    return layers


def is_patched(layer: torch.nn.Module) -> bool:
    return bool(layer.__dict__.get(_PATCH_FLAG, False))


def patch_model(model: torch.nn.Module) -> list[int]:
    """Routes each serviceable GPT-NeoX decoder layer's MLP down projection, bias
    and parallel residual through :func:`clusterfusion.mlp_down_residual`.

    Patches layer instances (not the class), so other models are unaffected.
    Layers that cannot be served are left to HuggingFace with a warning. Patching
    twice is harmless. Call it after moving the model to its device and dtype.

    Returns:
        The indices of the layers that now use the op.

    Raises:
        TypeError: ``model`` holds no GPTNeoXLayer.
        RuntimeError: the installed transformers changed GPTNeoXLayer.forward.
    """
    _check_transformers_layer()
    served, skipped = [], {}
    for index, layer in enumerate(_layers(model)):
        reason = _unsupported_reason(layer)
        if reason is not None:
            skipped.setdefault(reason, []).append(index)
            continue
        if not is_patched(layer):
            layer.forward = types.MethodType(_fused_forward, layer)
            layer.__dict__[_PATCH_FLAG] = True
        served.append(index)
    for reason, indices in skipped.items():
        warnings.warn(
            f"clusterfusion.hf: left {len(indices)} layer(s) {_ranges(indices)} to HuggingFace: {reason}",
            stacklevel=2,
        )
    return served


def unpatch_model(model: torch.nn.Module) -> int:
    """Restores HuggingFace's forward on every patched layer; returns how many."""
    restored = 0
    for layer in _layers(model):
        if is_patched(layer):
            del layer.forward
            del layer.__dict__[_PATCH_FLAG]
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
