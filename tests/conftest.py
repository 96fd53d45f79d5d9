"""Shared helpers: mlp_down_residual's inputs and float64 reference, the
comparisons against a reference (per element and in norm), output poisoning,
a tiny GPT-NeoX model and the `gpu` marker.

Every test draws fresh random inputs from a seed chosen for it and printed, so
pytest shows it with a failure; CLUSTERFUSION_TEST_SEED=N repeats a run.
"""

from __future__ import annotations

import math
import os
import random

import pytest
import torch

import clusterfusion  # registers the ops


def gpu_skip_reason(card: str, capability: tuple[int, int], targets: str) -> str | None:
    """Why the GPU tests cannot run on `card` of compute capability `capability`
    with a build for `targets` (``clusterfusion._C.CUDA_ARCHS``, e.g.
    ``"sm_90a/sm_120a"``), or None when the build has code for it."""
    built = {target.rstrip("a") for target in targets.split("/")}
    if f"sm_{capability[0]}{capability[1]}" in built:
        return None
    return (f"this build of clusterfusion has no code for {card} (compute capability "
            f"{capability[0]}.{capability[1]}); it targets {targets}")


def _gpu_skip_reason_here() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    return gpu_skip_reason(torch.cuda.get_device_name(), torch.cuda.get_device_capability(),
                           clusterfusion._C.CUDA_ARCHS)


_GPU_SKIP_REASON = _gpu_skip_reason_here()
#: Marks a test that needs a GPU this build of clusterfusion has code for.
gpu = pytest.mark.skipif(_GPU_SKIP_REASON is not None, reason=_GPU_SKIP_REASON or "")


def opcheck_cases(rows_past_fused: int) -> list:
    """(device, dtype, m) cases for an MLP op's ``torch.library.opcheck``: the CPU
    backend in fp32 and bf16, and CUDA in fp16 and bf16 with 1, 5 and
    `rows_past_fused` rows (more than MAX_FUSED_ROWS: the unfused path)."""
    return [
        ("cpu", torch.float32, 1),
        ("cpu", torch.bfloat16, 3),
        pytest.param("cuda", torch.float16, 1, marks=gpu),
        pytest.param("cuda", torch.bfloat16, 5, marks=gpu),
        pytest.param("cuda", torch.float16, rows_past_fused, marks=gpu),
    ]


@pytest.fixture(autouse=True)
def random_seed():
    seed = int(os.environ.get("CLUSTERFUSION_TEST_SEED", random.randrange(2**31)))
    print(f"random seed {seed} (CLUSTERFUSION_TEST_SEED={seed} repeats it)")
    torch.manual_seed(seed)
    return seed


# ||out - ref|| / ||ref|| bounds against the float64 reference.
TOLERANCE = {torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5, torch.float64: 1e-12}
# Per-element bounds (atol, rtol) against the float64 reference: every element
# within atol * rms(ref) + rtol * |ref| (see assert_matches). An op that rounds
# its result once is off by at most half an ulp: 2**-11 |ref| in fp16, 2**-8 in
# bf16. rtol is 8 such half-ulps; atol, scaled to the output's typical
# magnitude (its RMS), covers elements near zero, whose error comes from the
# rounding of larger intermediates (the normalized input and the GELU output of
# the MLP block, the three roundings of the fp16/bf16 CPU backend) rather than
# from their own size. Emulating those roundings in float64 over the tested
# shapes needs at most 7e-4 (fp16) and 5.5e-3 (bf16) of atol at this rtol:
# the bounds leave about 3x. bf16's ulp is 8x fp16's (3 fewer mantissa bits).
# fp32 and fp64 are the CPU backends, off by their own rounding only.
ELEMENT_TOLERANCE = {
    torch.float16: (2e-3, 4e-3),
    torch.bfloat16: (1.6e-2, 3.2e-2),
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-12, 1e-12),
}


def make_mlp_down_inputs(m, hidden, ffn, dtype, device, *, bias=True, generator=None, lead=None):
    """Fresh random inputs (never zeros) of :func:`clusterfusion.mlp_down_residual`
    for a decode step with `m` tokens (rows).

    `lead` overrides the leading shape of hidden_states / attn_output (its
    product must be `m`); mlp_intermediate is always [m, ffn].
    """
    g = generator or torch.Generator(device="cpu").manual_seed(int(torch.randint(2**31, ())))
    lead = (m,) if lead is None else tuple(lead)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float32) * scale).to(dtype).to(device)

    return dict(
        hidden_states=rnd(*lead, hidden),
        attn_output=rnd(*lead, hidden),
        mlp_intermediate=rnd(m, ffn),
        weight=rnd(hidden, ffn, scale=1.0 / math.sqrt(ffn)),
        bias=rnd(hidden, scale=0.5) if bias else None,
    )


def mlp_down_reference(hidden_states, attn_output, mlp_intermediate, weight, bias):
    """float64 reference of :func:`clusterfusion.mlp_down_residual`, on the inputs' device."""
    h = hidden_states.double()
    x = mlp_intermediate.double().reshape(-1, weight.shape[1])
    out = x @ weight.double().T
    if bias is not None:
        out = out + bias.double()
    return out.reshape(h.shape) + attn_output.double() + h


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert torch.isfinite(out).all(), "output has NaN/Inf (an element left unwritten?)"
    return ((out.double() - ref).norm() / ref.norm()).item()


def assert_close(out: torch.Tensor, ref: torch.Tensor, *, atol: float, rtol: float, rel: float,
                 what: str = "output") -> None:
    """Asserts `out` has the shape of `ref`, is finite, has every element within
    ``atol + rtol * |ref|`` of it (atol absolute) and ``||out - ref|| / ||ref|| < rel``.

    A failure names `what` was compared, how many elements are off, the worst
    one (relative to its bound), its value and its reference.
    """
    assert out.shape == ref.shape, (what, out.shape, ref.shape)
    finite = torch.isfinite(out)
    if not finite.all():
        first = tuple(int(i) for i in (~finite).nonzero()[0])
        raise AssertionError(f"{what}: {int((~finite).sum())} of {out.numel()} elements are NaN/Inf (left "
                             f"unwritten?), the first at index {first}")
    out64, ref64 = out.double(), ref.double()
    diff = (out64 - ref64).abs()
    bound = atol + rtol * ref64.abs()
    outside = diff > bound
    if outside.any():
        worst = tuple(int(i) for i in torch.unravel_index((diff / bound).argmax(), diff.shape))
        raise AssertionError(
            f"{what}: {int(outside.sum())} of {out.numel()} elements differ by more than atol {atol:.3g} + rtol {rtol:.3g} "
            f"* |ref|; the worst, at index {worst}: {out64[worst].item():.6g} against the reference "
            f"{ref64[worst].item():.6g} (off by {diff[worst].item():.3g}, bound {bound[worst].item():.3g})"
        )
    err = ((out64 - ref64).norm() / ref64.norm()).item()
    assert err < rel, f"{what}: relative error ||out - ref|| / ||ref|| = {err:.3g}, not below {rel:.3g}"


def assert_matches(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, *, rel: float | None = None,
                   element: tuple[float, float] | None = None, what: str = "output") -> None:
    """:func:`assert_close` with the bounds of `dtype`: ``ELEMENT_TOLERANCE[dtype]``
    (atol in units of the reference's root mean square) unless `element` gives
    another (atol, rtol) pair, and ``TOLERANCE[dtype]`` unless `rel` is given."""
    atol, rtol = ELEMENT_TOLERANCE[dtype] if element is None else element
    rms = ref.double().pow(2).mean().sqrt().item()
    assert_close(out, ref, atol=atol * rms, rtol=rtol, rel=TOLERANCE[dtype] if rel is None else rel, what=what)


# A GPT-NeoX model small enough for the CPU, with Pythia's layer structure.
TINY_GPT_NEOX = dict(
    vocab_size=128, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256,
    rotary_pct=0.25, max_position_embeddings=128, use_parallel_residual=True,
)


def gpt_neox_model(device="cpu", dtype=torch.float32, **overrides):
    """A GPTNeoXForCausalLM with deterministic random weights, in eval mode (needs transformers)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**{**TINY_GPT_NEOX, **overrides}))
    return model.to(dtype).eval()


def call_poisoned(fn, inputs: dict) -> torch.Tensor:
    """Calls fn(**inputs) with NaN left in the memory its CUDA output will occupy.

    The caching allocator hands a freed block of the same size on the same
    stream to the next request, so the op's output lands on NaN-filled memory;
    the assertion proves it did, and a later finiteness check catches any
    element the kernel failed to write.
    """
    h = inputs["hidden_states"]
    poison = torch.full(h.shape, float("nan"), dtype=h.dtype, device=h.device)
    address = poison.data_ptr()
    del poison
    out = fn(**inputs)
    assert out.data_ptr() == address, "output did not reuse the poisoned block"
    return out
