"""The patch on one layer instance, whatever its family: the patched forward
installed as a ``functools.partial`` (which pickles), the forward the layer had
before (kept in its ``__dict__``, called for what no fusion serves, put back by
unpatching) and the fusions the layer may use."""

from __future__ import annotations

import functools
import types

import torch

from .._fusions import FUSIONS

# In a patched layer's __dict__: the instance `forward` it had before patching, or None.
_PREVIOUS_FORWARD = "_clusterfusion_previous_forward"
# In a patched layer's __dict__: the fusions it may use, most fused first.
_LAYER_FUSIONS = "_clusterfusion_fusions"


def is_patched(layer: torch.nn.Module) -> bool:
    """Whether :func:`clusterfusion.hf.patch_model` patched `layer` (and no unpatching followed)."""
    return _PREVIOUS_FORWARD in layer.__dict__


def install(layer: torch.nn.Module, patched_forward) -> None:
    """Makes ``patched_forward(layer, ...)`` the layer's forward, keeping the one it
    had; a patched layer is left as it is. `patched_forward` is a module-level
    function, so that the layer pickles and deep-copies."""
    if not is_patched(layer):
        layer.__dict__[_PREVIOUS_FORWARD] = layer.__dict__.get("forward")
        layer.forward = functools.partial(patched_forward, layer)


def set_fusions(layer: torch.nn.Module, fusions: tuple[str, ...]) -> None:
    """The fusions `layer` may use from now on, most fused first."""
    layer.__dict__[_LAYER_FUSIONS] = fusions


def layer_fusions(layer: torch.nn.Module) -> tuple[str, ...]:
    """The fusions `layer` may use, most fused first (all where none were set)."""
    return layer.__dict__.get(_LAYER_FUSIONS, FUSIONS)


def previous_forward(layer: torch.nn.Module, *args, **kwargs):
    """Calls the forward the layer had before patching (HuggingFace's, or another
    library's wrapper) directly: torch.compile traces it without a graph break."""
    previous = layer.__dict__.get(_PREVIOUS_FORWARD)
    if previous is not None:
        return previous(*args, **kwargs)
    return type(layer).forward(layer, *args, **kwargs)


def _is_installed(forward, patched_forward) -> bool:
    return isinstance(forward, functools.partial) and forward.func is patched_forward


def restore(layer: torch.nn.Module, patched_forward) -> bool:
    """Puts back the forward `layer` had before :func:`install` put
    `patched_forward` there; False when the layer is not patched.

    When another library wrapped the patched forward afterwards (accelerate keeps
    the forward it wraps as ``_old_forward``), its wrapper stays and wraps what
    was there before patching instead.
    """
    if not is_patched(layer):
        return False
    previous = layer.__dict__.pop(_PREVIOUS_FORWARD)
    layer.__dict__.pop(_LAYER_FUSIONS, None)
    if _is_installed(layer.__dict__.get("forward"), patched_forward):
        if previous is None:
            del layer.forward
        else:
            layer.forward = previous
    elif _is_installed(layer.__dict__.get("_old_forward"), patched_forward):
        layer._old_forward = previous if previous is not None else types.MethodType(type(layer).forward, layer)
    return True
