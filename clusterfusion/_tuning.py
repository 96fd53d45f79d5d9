"""Launch tuning: pin a kernel's launch plan or turn programmatic dependent
launch off, for one call or for a block of code.

    with clusterfusion.tuning(plan="184:8:8", pdl=False):
        out = clusterfusion.mlp_down_residual(...)

    out = clusterfusion.mlp_down_residual(..., plan="184:8:8")   # one call

Neither setting changes the function an op computes, only how its kernel is laid
out on the GPU; a pinned plan changes how the reduction is split among CTAs and so
the rounding of the sums (every plan stays within the op's documented error, and
each is bitwise reproducible). The CPU backends check a pin's form and have no
launch to pin: on the CPU a well-formed pin has no effect. The settings are per thread and are
restored when the block exits. Ops read them when they are called: a CUDA graph
keeps the launches it captured, and ``torch.compile`` bakes the values in force
while it traces (it recompiles when they change).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading

from . import _C

__all__ = ["Tuning", "tuning", "current_tuning"]


@dataclasses.dataclass(frozen=True)
class Tuning:
    """Launch settings the ops read.

    Attributes:
        plan: ``"auto"`` (the planner chooses from the device's properties) or
            ``"BLOCK_N:CLUSTER[:STAGES]"`` for the MLP-down kernel: outputs per
            cluster (a multiple of 8, at most 256), CTAs per cluster (1-8) and,
            optionally, pipeline stages (2-32; trimmed to what shared memory holds).
        pdl: programmatic dependent launch: a kernel may start streaming its
            weights while the previous kernel in the stream finishes.
        block_plan: ``"auto"`` or ``"UP;DOWN"`` for the MLP block's two GEMV
            kernels (the up and the down projection), each ``"auto"`` or ``"BLOCK_N:CLUSTER[:STAGES]"``.
        attention_plan: ``"auto"`` or ``"QKV;DENSE"`` for the attention block's
            two GEMV kernels (the QKV and the output projection), each as in ``block_plan``.
        layer_plan: how :func:`clusterfusion.gpt_neox_layer` runs a layer: ``"auto"``,
            ``"one_launch"`` (the layer kernel where it serves the shape) or ``"blocks"``.
            It reaches the layers the HuggingFace patch and the ``Decoder`` serve.
    """

    plan: str = "auto"
    pdl: bool = True
    block_plan: str = "auto"
    attention_plan: str = "auto"
    layer_plan: str = "auto"


LAYER_PLANS = ("auto", "one_launch", "blocks")


class _State(threading.local):
    def __init__(self):
        self.current = Tuning()


_state = _State()


def current_tuning() -> Tuning:
    """The settings in force in this thread."""
    return _state.current


@contextlib.contextmanager
def tuning(plan: str | None = None, pdl: bool | None = None, *, block_plan: str | None = None,
           attention_plan: str | None = None, layer_plan: str | None = None):
    """Context manager: ops called inside use these launch settings.

    Arguments left ``None`` keep the enclosing setting. Yields the settings in force.

    Raises:
        TypeError: a plan is not a string or ``pdl`` not a bool.
        ValueError: a malformed plan string or a ``layer_plan`` not in
            ``("auto", "one_launch", "blocks")`` (checked here, before any op reads it).
    """
    if plan is not None and not isinstance(plan, str):
        raise TypeError(f"clusterfusion.tuning: argument 'plan' must be a str like \"184:8:8\" or \"auto\"; got {plan!r}")
    for name, value in (("block_plan", block_plan), ("attention_plan", attention_plan)):
        if value is not None and not isinstance(value, str):
            raise TypeError(
                f"clusterfusion.tuning: argument '{name}' must be a str like \"80:1;184:8\" or \"auto\"; got {value!r}"
            )
    if pdl is not None and not isinstance(pdl, bool):
        raise TypeError(f"clusterfusion.tuning: argument 'pdl' must be a bool; got {pdl!r}")
    if layer_plan is not None and layer_plan not in LAYER_PLANS:
        raise (ValueError if isinstance(layer_plan, str) else TypeError)(
            f"clusterfusion.tuning: argument 'layer_plan' must be one of {LAYER_PLANS}; got {layer_plan!r}")
    for name, value in (("plan", plan), ("block_plan", block_plan), ("attention_plan", attention_plan)):
        if value is not None:
            _C.check_plan(name, value)
    previous = _state.current
    _state.current = dataclasses.replace(
        previous, **{k: v for k, v in (("plan", plan), ("block_plan", block_plan), ("attention_plan", attention_plan),
                                ("layer_plan", layer_plan), ("pdl", pdl)) if v is not None}
    )
    try:
        yield _state.current
    finally:
        _state.current = previous
