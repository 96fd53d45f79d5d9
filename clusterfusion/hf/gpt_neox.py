"""GPT-NeoX under the patch: the layers, the modules each fusion bypasses and the
ones whose weights its op takes, why a layer cannot be served beyond the reasons
of every family (clusterfusion.hf.eligibility), and the patched forward."""

from __future__ import annotations

import torch
from transformers.activations import GELUActivation
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXAttention, GPTNeoXLayer, GPTNeoXMLP

from ..ops import attention_block, gpt_neox_layer, mlp_block_residual, mlp_down_residual
from . import eligibility, layer_patch
from .eligibility import modules_reason, weight_reason


def layers(model: torch.nn.Module) -> list[GPTNeoXLayer]:
    """The model's GPT-NeoX decoder layers; TypeError when it holds none."""
    found = [m for m in model.modules() if isinstance(m, GPTNeoXLayer)]
    if not found:
        raise TypeError(
            f"clusterfusion.hf: argument 'model' ({type(model).__name__}) holds no GPTNeoXLayer; "
            "expected a GPTNeoXForCausalLM or GPTNeoXModel"
        )
    return found


def patchable(layer: GPTNeoXLayer) -> bool:
    """Whether the patched forward is written for `layer`: the fusions serve the parallel residual only."""
    return layer.use_parallel_residual


# ---- the modules whose weights an op takes ---------------------------------------------


def _attention_block_modules(layer: GPTNeoXLayer) -> dict[str, torch.nn.Module]:
    """The modules whose weight and bias :func:`clusterfusion.attention_block` takes,
    by name, in its argument order."""
    attention = layer.attention
    return {"input_layernorm": layer.input_layernorm, "query_key_value": attention.query_key_value,
            "dense": attention.dense}


def _mlp_block_modules(layer: GPTNeoXLayer) -> dict[str, torch.nn.Module]:
    """The modules whose weight and bias :func:`clusterfusion.mlp_block_residual` takes,
    by name, in its argument order."""
    mlp = layer.mlp
    return {"post_attention_layernorm": layer.post_attention_layernorm, "dense_h_to_4h": mlp.dense_h_to_4h,
            "dense_4h_to_h": mlp.dense_4h_to_h}


def _weights(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Each module's weight, by the module's name (what :func:`weight_reason` checks)."""
    return {name: module.weight for name, module in modules.items()}


def _weights_and_biases(modules: dict[str, torch.nn.Module]) -> list[torch.Tensor | None]:
    """Each module's weight, then its bias, module after module (as the block ops take them)."""
    return [tensor for module in modules.values() for tensor in (module.weight, module.bias)]


# ---- why a fusion cannot serve a layer ---------------------------------------------------


def _layer_reason(layer: GPTNeoXLayer) -> str | None:
    """Why no fusion can serve `layer` as it is now, whatever the call; None if one may."""
    if not layer.use_parallel_residual:
        return "no parallel residual (use_parallel_residual=False)"
    return eligibility.layer_reason(layer)


def _mlp_reason(layer: GPTNeoXLayer) -> str | None:
    """Why no MLP fusion can serve `layer` beyond what _layer_reason says; None if one may."""
    mlp = layer.mlp
    return modules_reason((
        ("mlp", mlp, GPTNeoXMLP),
        ("dense_4h_to_h", mlp.dense_4h_to_h, torch.nn.Linear),
        ("post_attention_dropout", layer.post_attention_dropout, torch.nn.Dropout),
        ("post_mlp_dropout", layer.post_mlp_dropout, torch.nn.Dropout),
    ))


def _block_reason(layer: GPTNeoXLayer) -> str | None:
    """Why the MLP block op cannot serve `layer` beyond what _mlp_reason says; None if it can."""
    mlp, norm = layer.mlp, layer.post_attention_layernorm
    reason = modules_reason((
        ("post_attention_layernorm", norm, torch.nn.LayerNorm),
        ("dense_h_to_4h", mlp.dense_h_to_4h, torch.nn.Linear),
        ("act", mlp.act, GELUActivation),
    ))
    if reason is not None:
        return reason
    if mlp.act.act is not torch.nn.functional.gelu:
        return "the activation is not the exact GELU (hidden_act=\"gelu\")"
    if norm.weight is None or tuple(norm.normalized_shape) != (mlp.dense_h_to_4h.in_features,):
        return "post_attention_layernorm is not an affine LayerNorm over the hidden size"
    return weight_reason("mlp_block_residual", _weights(_mlp_block_modules(layer)))


def _down_reason(layer: GPTNeoXLayer) -> str | None:
    """Why the MLP-down op cannot serve `layer` beyond what _mlp_reason says; None if it can."""
    return weight_reason("mlp_down_residual", {"dense_4h_to_h": layer.mlp.dense_4h_to_h.weight})


def _attention_reason(layer: GPTNeoXLayer) -> str | None:
    """Why the attention block op cannot serve `layer` beyond what _layer_reason says,
    whatever the call; None if it may."""
    attention, norm = layer.attention, layer.input_layernorm
    reason = modules_reason((
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
    return weight_reason("attention_block", _weights(_attention_block_modules(layer)), attention.head_size)


_REASONS = eligibility.FamilyReasons(
    layer=_layer_reason,
    attention=_attention_reason,
    mlp=_mlp_reason,
    by_mlp_fusion={"mlp_block_residual": _block_reason, "mlp_down_residual": _down_reason},
)


def static_reasons(layer: GPTNeoXLayer, fusions: tuple[str, ...]) -> tuple[dict[str, str | None], str | None]:
    """:func:`eligibility.static_reasons` for a GPT-NeoX layer: {fusion: why it
    cannot serve `layer` as it is now, or None}, and the MLP fusion that serves."""
    return eligibility.static_reasons(_REASONS, layer, fusions)


# ---- the patched forward -------------------------------------------------------------------


def patched_forward(
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
    code for a branch none serves, and its whole forward when neither is served.
    Where both blocks serve (and both LayerNorms share one eps), the whole layer is
    one :func:`clusterfusion.gpt_neox_layer`.

    Installed on a layer as ``functools.partial(patched_forward, layer)``: models
    pickle it by this function's qualified name."""
    cache, mlp = None, None
    if not eligibility.autograd_or_training(layer, hidden_states):
        reasons, mlp = static_reasons(layer, layer_patch.layer_fusions(layer))
        for reason, runs in eligibility.fallbacks(reasons, mlp):
            eligibility.warn_once(reason, runs)
        if "attention_block" in reasons and reasons["attention_block"] is None:
            cache, reason = eligibility.static_cache_layer(
                layer_past, layer.attention.layer_idx, hidden_states, attention_mask, position_embeddings
            )
            if reason is not None:
                eligibility.warn_once(reason, "HuggingFace's attention" if mlp is not None else "HuggingFace's forward")
    if cache is None and mlp is None:
        return layer_patch.previous_forward(
            layer, hidden_states, attention_mask, position_ids, use_cache, layer_past, position_embeddings, **kwargs
        )
    mlp_module, norm = layer.mlp, layer.post_attention_layernorm
    if cache is not None and mlp == "mlp_block_residual" and layer.input_layernorm.eps == norm.eps:
        # Both blocks serve the layer: the whole layer op (one launch where its kernel serves the shape).
        cos, sin = position_embeddings
        out = gpt_neox_layer(
            hidden_states, *_weights_and_biases(_attention_block_modules(layer)),
            *_weights_and_biases(_mlp_block_modules(layer)), cos, sin, cache.keys, cache.values,
            cache.cumulative_length, attention_mask, norm.eps,
        )
        cache.cumulative_length.add_(1)  # as StaticLayer.update advances it
        return out
    if cache is not None:
        cos, sin = position_embeddings
        attn_output = attention_block(
            hidden_states, *_weights_and_biases(_attention_block_modules(layer)), cos, sin,
            cache.keys, cache.values, cache.cumulative_length, attention_mask, layer.input_layernorm.eps,
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
    if mlp == "mlp_block_residual":
        return mlp_block_residual(
            hidden_states, attn_output, *_weights_and_biases(_mlp_block_modules(layer)), norm.eps
        )
    if mlp == "mlp_down_residual":
        down = mlp_module.dense_4h_to_h
        intermediate = mlp_module.act(mlp_module.dense_h_to_4h(norm(hidden_states)))
        return mlp_down_residual(hidden_states, attn_output, intermediate, down.weight, down.bias)
    attn_output = layer.post_attention_dropout(attn_output)
    mlp_output = layer.post_mlp_dropout(mlp_module(norm(hidden_states)))
    return mlp_output + attn_output + hidden_states
