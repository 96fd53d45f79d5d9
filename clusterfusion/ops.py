"""Python wrappers of the ``torch.ops.clusterfusion`` operators.

Every function here is a thin, documented front for one registered operator, so
the same call works eagerly, under ``torch.compile`` and inside CUDA graphs.
"""

from __future__ import annotations

import functools
import inspect
from typing import NamedTuple

import torch

from . import _C
from ._tuning import current_tuning

__all__ = [
    "attention_block",
    "attention_block_plan",
    "attention_block_unsupported_reason",
    "AttentionBlockPlan",
    "gpt_neox_layer",
    "gpt_neox_layer_plan",
    "mlp_block_residual",
    "mlp_block_residual_plan",
    "mlp_block_residual_unsupported_reason",
    "MlpBlockPlan",
    "mlp_down_residual",
    "mlp_down_residual_plan",
    "mlp_down_residual_unsupported_reason",
    "pythia_2b8_mlp_only",
    "pythia_6b9_mlp_only",
    "sample_tokens",
    "ProjectionPlan",
    "MlpDownPlan",
    "MAX_FUSED_ROWS",
]

#: Rows of ``hidden_states`` (tokens decoded together, m) the fused MLP-down
#: kernel serves; more go to cuBLAS. Read from the compiled kernel.
MAX_FUSED_ROWS: int = _C.MLP_DOWN_MAX_FUSED_M


def mlp_down_residual(
    hidden_states: torch.Tensor,
    attn_output: torch.Tensor,
    mlp_intermediate: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    plan: str | None = None,
    pdl: bool | None = None,
) -> torch.Tensor:
    """MLP down projection fused with its bias and GPT-NeoX's parallel residual.

    Computes ``hidden_states + attn_output + mlp_intermediate @ weight.T + bias``
    with fp32 accumulation and a single rounding to the input dtype.

    Args:
        hidden_states: ``[..., hidden]``, the layer's input (first residual).
        attn_output: same shape as ``hidden_states`` (second residual).
        mlp_intermediate: ``[ffn]`` or ``[..., ffn]`` with as many rows as
            ``hidden_states``: the MLP's up projection after GELU.
        weight: ``[hidden, ffn]``, exactly as HuggingFace stores
            ``layer.mlp.dense_4h_to_h.weight`` (not transposed).
        bias: ``[hidden]`` or ``None``.
        plan: launch plan, ``"auto"`` or ``"BLOCK_N:CLUSTER[:STAGES]"`` (see
            :class:`clusterfusion.Tuning`); ``None`` takes the one of the
            enclosing :func:`clusterfusion.tuning` block (default ``"auto"``).
        pdl: programmatic dependent launch; ``None`` takes the enclosing
            :func:`clusterfusion.tuning` setting (default on).

    Returns:
        A new tensor shaped like ``hidden_states``.

    Supported inputs:
        * CUDA, compute capability 9.0 (H100/H200) or 12.0 (RTX 5090), fp16 or
          bf16. ``ffn`` must be a multiple of 8 and the weight's rows unit-stride
          and 16-byte aligned (any ``hidden``). Up to ``MAX_FUSED_ROWS`` rows run
          in the fused kernel (the weight is streamed once for all rows); more
          rows run as cuBLAS ``linear`` plus two adds.
        * CPU, fp32, fp64, fp16 or bf16: an ATen reference (``linear`` plus two adds).

    Gradients flow to every tensor argument (the formula is registered with
    the op), on every backend.

    Raises:
        ValueError: wrong shapes, mixed devices, a weight layout the kernel
            cannot stream, or a malformed ``plan``.
        TypeError: mixed or unsupported dtypes.
        RuntimeError: a GPU this build has no code for, or a pinned plan that
            does not fit it.
    """
    tuning = current_tuning()
    return torch.ops.clusterfusion.mlp_down_residual(
        hidden_states,
        attn_output,
        mlp_intermediate,
        weight,
        bias,
        plan=tuning.plan if plan is None else plan,
        pdl=tuning.pdl if pdl is None else pdl,
    )


class ProjectionPlan(NamedTuple):
    """How one projection (a split-K GEMV: :func:`mlp_down_residual`, and each of
    the two projections of :func:`mlp_block_residual` and :func:`attention_block`)
    is laid out on the GPU.

    The grid is ``(cluster_size, n_tiles)``: each cluster of ``cluster_size``
    CTAs computes ``block_n`` outputs and splits the reduction (the weight's
    columns: ``ffn`` for the MLP's down projection) among its CTAs,
    ``chunks_per_cta`` 64-wide chunks each, through a ring of ``stages``
    shared-memory stages. A CTA lets the next kernel launch when
    ``trigger_chunks_left`` chunks are left. ``resident_clusters`` is how many
    such clusters the device holds at once.
    """

    block_n: int
    cluster_size: int
    stages: int
    n_tiles: int
    chunks_per_cta: int
    trigger_chunks_left: int
    threads: int
    smem_bytes: int
    resident_clusters: int


#: The former name of :class:`ProjectionPlan`, kept for code written against it.
MlpDownPlan = ProjectionPlan


def mlp_down_residual_plan(weight: torch.Tensor, m: int = 1, *, plan: str | None = None) -> ProjectionPlan:
    """The launch plan :func:`mlp_down_residual` uses for ``weight`` and ``m`` tokens.

    Plans are chosen once per device, dtype, shape and pin, from the device's
    multiprocessor count, shared memory, memory bandwidth and cluster
    residency, and cached; this returns the cached one (choosing it if needed).

    Args:
        weight: the CUDA ``[hidden, ffn]`` weight the op would stream.
        m: tokens, ``1..MAX_FUSED_ROWS``.
        plan: a pin as in :func:`mlp_down_residual`; ``None`` takes the
            enclosing :func:`clusterfusion.tuning` setting.

    Raises:
        ValueError: a CPU weight, ``m`` out of range, a weight the kernel
            cannot stream or a malformed ``plan``.
        RuntimeError: as :func:`mlp_down_residual`.
    """
    pinned = current_tuning().plan if plan is None else plan
    return ProjectionPlan(*torch.ops.clusterfusion.mlp_down_residual_plan(weight, m, plan=pinned))


def mlp_down_residual_unsupported_reason(weight: torch.Tensor) -> str | None:
    """Why :func:`mlp_down_residual` would reject ``weight`` on its device, or ``None``.

    The backend of ``weight``'s device runs the checks the op itself runs on the
    weight (dtype; on CUDA also the layout the kernel streams, the GPU and this
    build's architectures) and returns the message the op would raise. Callers
    can route around the op without calling it. Shapes of the other arguments
    are not part of the answer.

    Raises:
        NotImplementedError: ``weight`` is on a device with no backend (not CPU
            or CUDA).
    """
    return torch.ops.clusterfusion.mlp_down_residual_unsupported_reason(weight) or None


def mlp_block_residual(
    hidden_states: torch.Tensor,
    attn_output: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor | None,
    up_weight: torch.Tensor,
    up_bias: torch.Tensor | None,
    down_weight: torch.Tensor,
    down_bias: torch.Tensor | None,
    eps: float = 1e-5,
    *,
    plan: str | None = None,
    pdl: bool | None = None,
) -> torch.Tensor:
    """GPT-NeoX's whole parallel-residual MLP branch in one op.

    Computes ``hidden_states + attn_output + down(gelu(up(layer_norm(hidden_states))))``
    with HuggingFace's ``post_attention_layernorm`` (``ln_weight``, ``ln_bias``,
    ``eps``), ``dense_h_to_4h`` (``up_weight``, ``up_bias``), the exact (erf) GELU
    of ``hidden_act="gelu"`` and ``dense_4h_to_h`` (``down_weight``, ``down_bias``).
    LayerNorm statistics and every accumulation are fp32; the normalized input and
    the GELU output are rounded to the input dtype (as HuggingFace's layers store
    them), the result once.

    Args:
        hidden_states: ``[..., hidden]``, the layer's input.
        attn_output: same shape, the attention branch's output.
        ln_weight, ln_bias: ``[hidden]`` (``ln_bias`` may be ``None``).
        up_weight: ``[ffn, hidden]`` as HuggingFace stores it; ``up_bias``: ``[ffn]`` or ``None``.
        down_weight: ``[hidden, ffn]`` as HuggingFace stores it; ``down_bias``: ``[hidden]`` or ``None``.
        eps: the LayerNorm's epsilon.
        plan: ``"auto"`` or ``"UP;DOWN"``, each ``"auto"`` or ``"BLOCK_N:CLUSTER[:STAGES]"``
            (see :class:`clusterfusion.Tuning`); ``None`` takes the enclosing
            :func:`clusterfusion.tuning` block's ``block_plan``.
        pdl: programmatic dependent launch; ``None`` takes the enclosing setting.

    Returns:
        A new tensor shaped like ``hidden_states``.

    Supported inputs:
        * CUDA, compute capability 9.0 or 12.0, fp16 or bf16. ``hidden`` and
          ``ffn`` multiples of 8, weights unit-stride along their last dimension
          with 16-byte aligned rows. Up to ``MAX_FUSED_ROWS`` rows run in three
          chained kernels (LayerNorm; up + GELU; down + residuals), each weight
          streamed once for all rows; more rows run as the ATen composite.
        * CPU, fp32, fp64, fp16 or bf16: the ATen composite (fp16/bf16 in fp32).

    Gradients flow to every tensor argument: with a gradient needed the op runs
    as the ATen composite, on every backend.

    Raises:
        ValueError: shapes that do not match (between the three matrices, the
            LayerNorm vectors and the activations), mixed devices, a weight layout
            the kernels cannot stream, a negative ``eps`` or a malformed ``plan``.
        TypeError: mixed or unsupported dtypes.
        RuntimeError: a GPU this build has no code for, or a pinned plan that does not fit it.
    """
    tuning = current_tuning()
    return torch.ops.clusterfusion.mlp_block_residual(
        hidden_states, attn_output, ln_weight, ln_bias, up_weight, up_bias, down_weight, down_bias, eps,
        plan=tuning.block_plan if plan is None else plan, pdl=tuning.pdl if pdl is None else pdl,
    )


class MlpBlockPlan(NamedTuple):
    """The two GEMV launch plans of :func:`mlp_block_residual`: the up projection
    (bias + GELU epilogue, reading the LayerNorm kernel's output) and the down
    projection (bias + residuals epilogue)."""

    up: ProjectionPlan
    down: ProjectionPlan


def mlp_block_residual_plan(
    up_weight: torch.Tensor, down_weight: torch.Tensor, m: int = 1, *, plan: str | None = None
) -> MlpBlockPlan:
    """The launch plans :func:`mlp_block_residual` uses for these weights and ``m`` tokens.

    Raises:
        ValueError: CPU weights, ``m`` out of range, weights the kernels cannot
            stream or a malformed ``plan``.
        RuntimeError: as :func:`mlp_block_residual`.
    """
    if plan is None:
        plan = current_tuning().block_plan
    return _plan_pair(MlpBlockPlan, torch.ops.clusterfusion.mlp_block_residual_plan(up_weight, down_weight, m, plan=plan))


def mlp_block_residual_unsupported_reason(up_weight: torch.Tensor, down_weight: torch.Tensor) -> str | None:
    """Why :func:`mlp_block_residual` would reject these weights on their device,
    or ``None`` (as :func:`mlp_down_residual_unsupported_reason`)."""
    return torch.ops.clusterfusion.mlp_block_residual_unsupported_reason(up_weight, down_weight) or None


def attention_block(
    hidden_states: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor | None,
    qkv_weight: torch.Tensor,
    qkv_bias: torch.Tensor | None,
    dense_weight: torch.Tensor,
    dense_bias: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    cache_position: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    plan: str | None = None,
    pdl: bool | None = None,
) -> torch.Tensor:
    """GPT-NeoX's attention branch for one new token, with its KV-cache append.

    For the token ``hidden_states`` at position ``p = cache_position``:

    1. ``q, k, v`` from ``query_key_value(layer_norm(hidden_states))`` (HuggingFace's
       ``input_layernorm`` with ``ln_weight``, ``ln_bias``, ``eps``), the projection's
       output viewed as ``[heads, 3 * head_dim]`` (each head's q, k, v contiguous);
    2. the rotary embedding on the first ``rotary_dims = cos.shape[-1]`` dims of q
       and k (``rotate_half`` convention, HuggingFace's ``cos``/``sin`` for ``p``);
    3. ``key_cache[0, :, p] = k`` and ``value_cache[0, :, p] = v``, in place;
    4. softmax attention of q over positions ``0..p`` (not the whole cache), scale
       ``head_dim ** -0.5``, fp32 softmax, plus the optional mask row;
    5. ``dense(attn) + dense_bias``: the branch's output, the ``attn_output`` the
       MLP ops take.

    q, k, v, the rotated q and k and the attention output are rounded to the input
    dtype (as HuggingFace's layers store them); accumulations are fp32. Workers that
    split a long context meet in a fixed order: results are bitwise reproducible.

    Args:
        hidden_states: one token of one sequence, ``[..., hidden]`` (e.g. ``[1, 1, hidden]``).
        ln_weight, ln_bias: ``[hidden]`` (``ln_bias`` may be ``None``).
        qkv_weight: ``[3 * hidden, hidden]``, ``query_key_value.weight`` as stored;
            ``qkv_bias``: ``[3 * hidden]`` or ``None``.
        dense_weight: ``[hidden, hidden]``; ``dense_bias``: ``[hidden]`` or ``None``.
        cos, sin: ``[..., rotary_dims]`` holding one row, as HuggingFace's rotary
            module returns them for the position (``rotary_dims`` even, at most ``head_dim``).
        key_cache, value_cache: ``[1, heads, max_len, head_dim]`` contiguous
            (HuggingFace's ``StaticCache`` layer tensors); written at ``p``.
        cache_position: int64 tensor holding ``p`` (0-d or ``[1]``), on the weights'
            device; the CUDA kernels read it on the device, so a CUDA graph
            replays correctly as it advances.
        attention_mask: ``None`` or one row ``[..., max_len]``: bool (``True``
            attends) or additive (float32 or the input dtype), as HuggingFace
            builds it for one new token.
        eps: the LayerNorm's epsilon.
        plan: ``"auto"`` or ``"QKV;DENSE"``, each ``"auto"`` or
            ``"BLOCK_N:CLUSTER[:STAGES]"``; ``None`` takes the enclosing
            :func:`clusterfusion.tuning` block's ``attention_plan``.
        pdl: programmatic dependent launch; ``None`` takes the enclosing setting.

    Returns:
        A new tensor shaped like ``hidden_states``.

    Supported inputs:
        * CUDA, compute capability 9.0 or 12.0, fp16 or bf16; ``head_dim`` 64, 80,
          96 or 128; ``hidden`` a multiple of 8. A position outside
          ``[0, max_len)`` cannot be checked on the host without a
          synchronization: the attention kernel then stops with a device-side
          assert (nothing is written; the CUDA context reports "device-side
          assert triggered" at the next synchronizing call, as HuggingFace's
          ``StaticCache.update`` does for such a position).
        * CPU, fp32, fp64, fp16 or bf16: the ATen composite (fp16/bf16 in fp32);
          an out-of-range position raises ``ValueError``.

    With a gradient needed the op runs as the ATen composite (reading the
    position on the host), so gradients flow as through HuggingFace's code.

    Raises:
        ValueError: shapes that do not match (weights, caches, rotary tables,
            mask), a head layout the kernels do not serve, mixed devices,
            non-contiguous caches, a negative ``eps`` or a malformed ``plan``.
        TypeError: mixed or unsupported dtypes, a ``cache_position`` that is not an int64 tensor.
        RuntimeError: a GPU this build has no code for, or a pinned plan that does not fit it.
    """
    _check_position_is_a_tensor("attention_block", cache_position)
    tuning = current_tuning()
    return torch.ops.clusterfusion.attention_block(
        hidden_states, ln_weight, ln_bias, qkv_weight, qkv_bias, dense_weight, dense_bias, cos, sin, key_cache,
        value_cache, cache_position, attention_mask, eps,
        plan=tuning.attention_plan if plan is None else plan, pdl=tuning.pdl if pdl is None else pdl,
    )


class AttentionBlockPlan(NamedTuple):
    """The two launch plans of :func:`attention_block`: the QKV projection and the
    output projection."""

    qkv: ProjectionPlan
    dense: ProjectionPlan


def attention_block_plan(
    qkv_weight: torch.Tensor, dense_weight: torch.Tensor, *, plan: str | None = None
) -> AttentionBlockPlan:
    """The launch plans :func:`attention_block` uses for these weights.

    Raises:
        ValueError: CPU weights, weights the kernels cannot stream or a malformed ``plan``.
        RuntimeError: as :func:`attention_block`.
    """
    if plan is None:
        plan = current_tuning().attention_plan
    return _plan_pair(AttentionBlockPlan, torch.ops.clusterfusion.attention_block_plan(qkv_weight, dense_weight, plan=plan))


def attention_block_unsupported_reason(
    qkv_weight: torch.Tensor, dense_weight: torch.Tensor, head_dim: int
) -> str | None:
    """Why :func:`attention_block` would reject these weights and head size on
    their device, or ``None`` (as :func:`mlp_down_residual_unsupported_reason`)."""
    return torch.ops.clusterfusion.attention_block_unsupported_reason(qkv_weight, dense_weight, head_dim) or None


def gpt_neox_layer(
    hidden_states: torch.Tensor,
    attn_ln_weight: torch.Tensor,
    attn_ln_bias: torch.Tensor | None,
    qkv_weight: torch.Tensor,
    qkv_bias: torch.Tensor | None,
    dense_weight: torch.Tensor,
    dense_bias: torch.Tensor | None,
    mlp_ln_weight: torch.Tensor,
    mlp_ln_bias: torch.Tensor | None,
    up_weight: torch.Tensor,
    up_bias: torch.Tensor | None,
    down_weight: torch.Tensor,
    down_bias: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    cache_position: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    layer_plan: str | None = None,
    attention_plan: str | None = None,
    block_plan: str | None = None,
    pdl: bool | None = None,
) -> torch.Tensor:
    """GPT-NeoX's parallel-residual decode layer for one new token:
    ``hidden_states + attention(ln1(hidden_states)) + mlp(ln2(hidden_states))``,
    appending this token's key and value to the caches at ``cache_position``.

    ``layer_plan`` picks how: ``"blocks"`` runs :func:`attention_block` followed by
    :func:`mlp_block_residual` (with the attention output as ``attn_output``), and so
    gives their results, dtypes, devices and errors bit for bit; ``"one_launch"`` runs
    the layer kernel on CUDA where it serves the shape (head_dim 64, 80, 96 or 128,
    hidden a multiple of 64 up to 8192, at most one head per cluster of CTAs; see
    :func:`gpt_neox_layer_plan`): the blocks' semantics in one launch, except that the
    attention output and the MLP output are not rounded separately (``hidden_states``
    and both branches are summed in fp32 and rounded once). ``"auto"`` (the default)
    picks the faster, today the blocks: the layer kernel is still slower
    (docs/history.md). The CPU, other shapes, a pinned ``attention_plan`` or
    ``block_plan``, and any call that needs a gradient run the blocks whatever the plan.
    Arguments are the attention block's (its LayerNorm as ``attn_ln_weight``,
    ``attn_ln_bias``) and the MLP block's (``mlp_ln_weight``, ``mlp_ln_bias``,
    ``up_*``, ``down_*``); one ``eps`` serves both LayerNorms, as in GPT-NeoX's config.
    ``layer_plan``, ``attention_plan`` and ``block_plan`` left ``None`` take the
    enclosing :func:`clusterfusion.tuning` block's (``layer_plan``: ``"auto"`` outside
    any); ``attention_plan`` and ``block_plan`` pin the blocks' launch plans.

    Raises:
        ValueError, TypeError, RuntimeError: as the two blocks; a LayerNorm parameter
            of the wrong shape names this op's argument; a ``layer_plan`` other than
            ``"auto"``, ``"one_launch"`` or ``"blocks"``.
    """
    _check_position_is_a_tensor("gpt_neox_layer", cache_position)
    tuning = current_tuning()
    return torch.ops.clusterfusion.gpt_neox_layer(
        hidden_states, attn_ln_weight, attn_ln_bias, qkv_weight, qkv_bias, dense_weight, dense_bias, mlp_ln_weight,
        mlp_ln_bias, up_weight, up_bias, down_weight, down_bias, cos, sin, key_cache, value_cache, cache_position,
        attention_mask, eps,
        layer_plan=tuning.layer_plan if layer_plan is None else layer_plan,
        attention_plan=tuning.attention_plan if attention_plan is None else attention_plan,
        block_plan=tuning.block_plan if block_plan is None else block_plan,
        pdl=tuning.pdl if pdl is None else pdl,
    )


def gpt_neox_layer_plan(qkv_weight: torch.Tensor, up_weight: torch.Tensor, heads: int) -> dict:
    """How :func:`gpt_neox_layer`'s one-launch kernel runs a shape on the weights'
    CUDA device: ``{"cluster_size", "ctas", "stages", "smem_bytes", "work"}`` with
    ``work`` one dict per CTA (``head`` (-1: none), ``qkv``, ``mlp``, ``dense`` and
    ``sum`` as ``range``s; the dealing of ``clusterfusion._layer_plan.deal``).

    Raises:
        ValueError: on the CPU, or naming why the kernel does not serve the shape
            (the layer then runs as its two block ops).
    """
    fields = torch.ops.clusterfusion.gpt_neox_layer_plan(qkv_weight, up_weight, heads)
    cluster_size, ctas, stages, smem_bytes = fields[:4]
    work = []
    for cta in range(ctas):
        head, *bounds = fields[4 + 9 * cta: 13 + 9 * cta]
        ranges = [range(bounds[i], bounds[i + 1]) for i in range(0, 8, 2)]
        work.append(dict(head=head, **dict(zip(("qkv", "mlp", "dense", "sum"), ranges))))
    return dict(cluster_size=cluster_size, ctas=ctas, stages=stages, smem_bytes=smem_bytes, work=work)


def sample_tokens(
    logits: torch.Tensor,
    uniform: torch.Tensor | float | None = None,
    *,
    temperature: torch.Tensor | float = 1.0,
    top_k: torch.Tensor | int = 0,
    top_p: torch.Tensor | float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row of ``logits``: temperature, top-k and top-p, then a draw
    from the kept tokens, in one kernel without a sort or a host synchronization.

    Tokens rank by their logits, highest first (ties: lower index first;
    ``-0.0`` ranks below ``0.0``), and their probabilities are
    ``softmax(logits / temperature)``. The ranking compares the logits, not
    ``logits / temperature``: the same order, except where the division rounds
    two logits to one value (they keep their logits' order). The kept tokens
    are the shortest prefix of the ranking that holds ``top_k`` tokens or
    ``top_p`` of the probability (at least one token); the result is the first
    kept token at which the kept tokens' running probability, renormalized,
    exceeds ``uniform``. With a fixed ``uniform``
    the result is a function of the inputs, the same on every run and device:
    probabilities are summed as integers (``exp(score - max score)`` in fixed
    point with ``64 - 2 * bits(vocab)`` fraction bits, 32 for a 50k
    vocabulary), so sums do not depend on their order and the CPU backend
    picks the same tokens as the CUDA kernel.

    Args:
        logits: ``[..., vocab]``, fp16, bf16 or fp32 (CPU also fp64, rounded to
            fp32: beyond fp32's range to ``+inf`` or ``-inf``); each row is one
            distribution. Finite logits and ``-inf`` (a token that is never
            drawn), at least one finite per row.
        uniform: the draw in ``[0, 1)``, one value or one per row; ``None``
            draws one per row with ``torch.rand`` (from ``generator``).
        temperature: ``> 0``; in a tensor, a value ``<= 0`` picks the
            highest-ranked token (a Python number must be ``> 0``).
        top_k: keep at most this many tokens; ``0`` (or less): no limit.
        top_p: in ``(0, 1]``: keep the fewest top tokens whose probability
            reaches ``top_p``; ``1``: no limit.
        generator: for ``uniform=None``.

    Every setting is a number or a tensor of one value or one per row
    (``uniform``, ``temperature``, ``top_p``: float32, ``top_k``: int64) on the
    device of ``logits``; tensor settings are read on the device, so one CUDA
    graph serves every setting.

    A row cannot be sampled when its logits hold a NaN (of either sign) or
    ``+inf``, or no finite logit (every one ``-inf``), or when its settings are
    out of range: ``uniform`` NaN or outside ``[0, 1)``, ``top_p`` NaN or
    outside ``(0, 1]``, ``temperature`` NaN. On CUDA its token is ``-1`` (the
    other rows are sampled as usual; raising would need a host
    synchronization); on the CPU the call raises ``ValueError`` naming the
    first such row (its index in ``logits.reshape(-1, vocab)``) and the
    reason.

    Returns:
        ``torch.long`` tokens shaped ``logits.shape[:-1]``; ``-1`` on CUDA for a
        row that cannot be sampled.

    Raises:
        ValueError: a Python-number setting out of range, as given or as the
            float32 the op reads (``uniform`` NaN or outside ``[0, 1)``,
            ``temperature`` NaN or ``<= 0``, ``top_p`` NaN or outside
            ``(0, 1]``), checked before the op runs; on the CPU, a row that
            cannot be sampled; a tensor of the wrong shape or device.
        TypeError: ``top_k`` neither an int nor a tensor; a tensor of the
            wrong dtype.
    """
    device = logits.device
    if uniform is None:
        rows = logits.shape[:-1].numel() if logits.dim() > 0 else 1
        source = generator.device if generator is not None else device
        uniform = torch.rand(rows, generator=generator, device=source).to(device)
    # The op reads float32 (rounded to nearest): a uniform from 1 - 2**-25 up is 1.0
    # there, a temperature or top_p up to 2**-150 is 0.0. NaN fails every rule.
    rules = (
        ("uniform", uniform, lambda v: 0 <= v < 1 - 2**-25, "in [0, 1) as float32"),
        ("temperature", temperature, lambda v: v > 2**-150, "> 0 as float32"),
        ("top_p", top_p, lambda v: v > 2**-150, "> 0 as float32"),
        ("top_p", top_p, lambda v: v <= 1, "in (0, 1]"),
    )
    for name, value, holds, rule in rules:
        if not isinstance(value, torch.Tensor) and not holds(value):
            raise ValueError(f"clusterfusion.sample_tokens: argument '{name}' must be {rule}; got {value!r}")
    if not isinstance(top_k, torch.Tensor) and not isinstance(top_k, int):
        raise TypeError(f"clusterfusion.sample_tokens: argument 'top_k' must be an int or a tensor; got {top_k!r}")

    def setting(value, dtype):
        return value if isinstance(value, torch.Tensor) else torch.full((1,), value, dtype=dtype, device=device)

    return torch.ops.clusterfusion.sample_tokens(
        logits,
        setting(uniform, torch.float32),
        setting(temperature, torch.float32),
        setting(top_k, torch.long),
        setting(top_p, torch.float32),
    )


def pythia_2b8_mlp_only(
    hidden_states: torch.Tensor,
    attn_output: torch.Tensor,
    mlp_intermediate: torch.Tensor,
    mlp_down_weight: torch.Tensor,
    mlp_down_bias: torch.Tensor,
) -> torch.Tensor:
    """Pythia-2.8B's MLP down projection plus residuals, under the name and
    argument order of the original ClusterFusionPlus-MLP project.

    Returns ``hidden_states + attn_output + mlp_intermediate @ mlp_down_weight.T
    + mlp_down_bias``.

    ``mlp_down_weight`` is ``[2560, 10240]`` = ``[hidden, ffn]``: pass
    ``layer.mlp.dense_4h_to_h.weight`` as HuggingFace stores it, not its
    transpose. ``hidden_states`` and ``attn_output`` are ``[1, 2560]`` (or
    ``[..., 2560]``), ``mlp_intermediate`` is ``[10240]`` (or ``[..., 10240]``),
    ``mlp_down_bias`` is ``[2560]``. See :func:`mlp_down_residual` for dtypes,
    devices and errors; a weight of another shape raises ``ValueError``.
    """
    return torch.ops.clusterfusion.pythia_2b8_mlp_only(
        hidden_states, attn_output, mlp_intermediate, mlp_down_weight, mlp_down_bias
    )


def pythia_6b9_mlp_only(
    hidden_states: torch.Tensor,
    attn_output: torch.Tensor,
    mlp_intermediate: torch.Tensor,
    mlp_down_weight: torch.Tensor,
    mlp_down_bias: torch.Tensor,
) -> torch.Tensor:
    """Pythia-6.9B's MLP down projection plus residuals.

    As :func:`pythia_2b8_mlp_only` with ``mlp_down_weight`` of shape
    ``[4096, 16384]`` = ``[hidden, ffn]`` (``layer.mlp.dense_4h_to_h.weight``).
    """
    return torch.ops.clusterfusion.pythia_6b9_mlp_only(
        hidden_states, attn_output, mlp_intermediate, mlp_down_weight, mlp_down_bias
    )


def _check_position_is_a_tensor(op: str, cache_position) -> None:
    """A Python number as ``cache_position`` is a TypeError, not torch's schema error."""
    if not isinstance(cache_position, torch.Tensor):
        raise TypeError(
            f"clusterfusion.{op}: argument 'cache_position' must be an int64 tensor on the weights' device (read "
            f"there, so a CUDA graph replays as it advances); got {type(cache_position).__name__} {cache_position!r}"
        )


def _plan_pair(kind, fields):
    """A block op's two GEMV plans from the fields its plan query returns, one after the other."""
    half = len(ProjectionPlan._fields)
    return kind(ProjectionPlan(*fields[:half]), ProjectionPlan(*fields[half:]))


def _register_fake(op: str, like: str):
    """Registers the decorated function as the fake kernel of ``clusterfusion::op``
    (torch.compile's tracing, meta tensors), behind the device check the backends
    run: every tensor argument on the device of argument `like`. Meta tensors
    mixed with real ones also land in the fake kernel, and an uninitialised
    result must never pass for a computed one."""

    def register(fake):
        signature = inspect.signature(fake)

        @functools.wraps(fake)
        def checked(*args, **kwargs):
            arguments = signature.bind(*args, **kwargs).arguments
            device = arguments[like].device
            for name, value in arguments.items():
                if isinstance(value, torch.Tensor) and value.device != device:
                    raise ValueError(
                        f"clusterfusion.{op}: argument '{name}' is on {value.device}; expected {device} like '{like}'"
                    )
            return fake(*args, **kwargs)

        torch.library.register_fake(f"clusterfusion::{op}")(checked)
        return fake

    return register


@_register_fake("mlp_down_residual", like="weight")
def _mlp_down_residual_fake(hidden_states, attn_output, mlp_intermediate, weight, bias=None, *, plan="auto", pdl=True):
    torch._check(weight.dim() == 2, lambda: f"weight must be 2-D [hidden, ffn]; got {tuple(weight.shape)}")
    torch._check(
        hidden_states.shape[-1] == weight.shape[0],
        lambda: f"hidden_states must be [..., {weight.shape[0]}]; got {tuple(hidden_states.shape)}",
    )
    torch._check(
        attn_output.shape == hidden_states.shape,
        lambda: f"attn_output must match hidden_states {tuple(hidden_states.shape)}; got {tuple(attn_output.shape)}",
    )
    torch._check(
        mlp_intermediate.shape[-1] == weight.shape[1],
        lambda: f"mlp_intermediate must be [..., {weight.shape[1]}]; got {tuple(mlp_intermediate.shape)}",
    )
    return torch.empty_like(hidden_states, memory_format=torch.contiguous_format)


@_register_fake("mlp_block_residual", like="up_weight")
def _mlp_block_residual_fake(hidden_states, attn_output, ln_weight, ln_bias, up_weight, up_bias, down_weight,
                             down_bias, eps=1e-5, *, plan="auto", pdl=True):
    torch._check(up_weight.dim() == 2, lambda: f"up_weight must be 2-D [ffn, hidden]; got {tuple(up_weight.shape)}")
    ffn, hidden = up_weight.shape
    torch._check(
        tuple(down_weight.shape) == (hidden, ffn),
        lambda: f"down_weight must be [{hidden}, {ffn}]; got {tuple(down_weight.shape)}",
    )
    torch._check(
        hidden_states.shape[-1] == hidden,
        lambda: f"hidden_states must be [..., {hidden}]; got {tuple(hidden_states.shape)}",
    )
    torch._check(
        attn_output.shape == hidden_states.shape,
        lambda: f"attn_output must match hidden_states {tuple(hidden_states.shape)}; got {tuple(attn_output.shape)}",
    )
    return torch.empty_like(hidden_states, memory_format=torch.contiguous_format)


@_register_fake("attention_block", like="qkv_weight")
def _attention_block_fake(hidden_states, ln_weight, ln_bias, qkv_weight, qkv_bias, dense_weight, dense_bias, cos, sin,
                          key_cache, value_cache, cache_position, attention_mask=None, eps=1e-5, *, plan="auto",
                          pdl=True):
    # The caches are written in place (the schema says so); the result is new.
    torch._check(qkv_weight.dim() == 2, lambda: f"qkv_weight must be 2-D [3 * hidden, hidden]; got {tuple(qkv_weight.shape)}")
    hidden = qkv_weight.shape[1]
    torch._check(
        hidden_states.shape[-1] == hidden and hidden_states.numel() == hidden,
        lambda: f"hidden_states must hold one token [..., {hidden}]; got {tuple(hidden_states.shape)}",
    )
    torch._check(
        key_cache.dim() == 4 and tuple(value_cache.shape) == tuple(key_cache.shape),
        lambda: f"key_cache and value_cache must be [1, heads, max_len, head_dim] alike; got "
        f"{tuple(key_cache.shape)} and {tuple(value_cache.shape)}",
    )
    return torch.empty_like(hidden_states, memory_format=torch.contiguous_format)


@_register_fake("gpt_neox_layer", like="qkv_weight")
def _gpt_neox_layer_fake(hidden_states, attn_ln_weight, attn_ln_bias, qkv_weight, qkv_bias, dense_weight, dense_bias,
                         mlp_ln_weight, mlp_ln_bias, up_weight, up_bias, down_weight, down_bias, cos, sin, key_cache,
                         value_cache, cache_position, attention_mask=None, eps=1e-5, *, layer_plan="auto",
                         attention_plan="auto", block_plan="auto", pdl=True):
    _attention_block_fake(hidden_states, attn_ln_weight, attn_ln_bias, qkv_weight, qkv_bias, dense_weight, dense_bias,
                          cos, sin, key_cache, value_cache, cache_position, attention_mask, eps)
    return _mlp_block_residual_fake(hidden_states, hidden_states, mlp_ln_weight, mlp_ln_bias, up_weight, up_bias,
                                    down_weight, down_bias, eps)


@_register_fake("sample_tokens", like="logits")
def _sample_tokens_fake(logits, uniform, temperature, top_k, top_p):
    torch._check(logits.dim() >= 1, lambda: f"logits must be [..., vocab]; got {tuple(logits.shape)}")
    return logits.new_empty(logits.shape[:-1], dtype=torch.long)
