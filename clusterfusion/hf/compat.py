"""The installed transformers against the APIs the patch was written for: a fused
forward that would no longer match HuggingFace's is refused before anything is patched."""

from __future__ import annotations

import inspect

import torch
import transformers
from transformers.cache_utils import StaticLayer
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXAttention, GPTNeoXLayer

from .._fusions import ATTENTION_FUSIONS

# GPTNeoXLayer.forward as the GPT-NeoX patch was written against (transformers 5.x).
_GPT_NEOX_LAYER_SIGNATURE = (
    "hidden_states",
    "attention_mask",
    "position_ids",
    "use_cache",
    "layer_past",
    "position_embeddings",
    "kwargs",
)
# GPTNeoXAttention.forward as the attention fusion was written against.
_GPT_NEOX_ATTENTION_SIGNATURE = ("hidden_states", "attention_mask", "layer_past", "position_embeddings", "kwargs")
# Attributes of a StaticLayer before its lazy initialization (keys and values come with it).
_STATIC_LAYER_ATTRIBUTES = ("cumulative_length", "max_cache_len", "is_initialized", "lazy_initialization")


def _parameters(method) -> tuple[str, ...]:
    """A method's parameter names after ``self``."""
    return tuple(inspect.signature(method).parameters)[1:]


def _static_layer_as_expected() -> bool:
    """Whether transformers' StaticLayer is the cache layer whose bookkeeping the
    attention fusion keeps: a device-side ``cumulative_length`` tensor that
    ``update(key_states, value_states)`` advances."""
    probe = StaticLayer(max_cache_len=1)
    return (
        _parameters(StaticLayer.update)[:2] == ("key_states", "value_states")
        and all(hasattr(probe, attribute) for attribute in _STATIC_LAYER_ATTRIBUTES)
        and isinstance(probe.cumulative_length, torch.Tensor)
    )


def check_gpt_neox(fusions: tuple[str, ...]) -> None:
    """Raises RuntimeError when the installed transformers changed GPTNeoXLayer.forward
    or, for the attention fusion among ``fusions``, GPTNeoXAttention.forward or its
    static cache layer."""
    layer = _parameters(GPTNeoXLayer.forward)
    if layer != _GPT_NEOX_LAYER_SIGNATURE:
        raise RuntimeError(
            f"clusterfusion.hf: GPTNeoXLayer.forward in transformers {transformers.__version__} takes "
            f"{layer}; this integration was written for {_GPT_NEOX_LAYER_SIGNATURE}. "
            "Its fused forward would no longer match HuggingFace's, so nothing was patched."
        )
    if not set(fusions) & set(ATTENTION_FUSIONS):
        return
    attention = _parameters(GPTNeoXAttention.forward)
    if attention != _GPT_NEOX_ATTENTION_SIGNATURE or not _static_layer_as_expected():
        raise RuntimeError(
            f"clusterfusion.hf: transformers {transformers.__version__} changed GPTNeoXAttention.forward "
            f"({attention}) or its static cache layer (StaticLayer, expected a device-side 'cumulative_length' "
            f"advanced by update(key_states, value_states)); the attention_block fusion was written for "
            f"{_GPT_NEOX_ATTENTION_SIGNATURE} and would no longer keep the cache's bookkeeping, so nothing was "
            "patched. Patch with fusions=(\"mlp_block_residual\",) to fuse the MLP branch only."
        )
