"""Shared helpers: inputs, the float64 reference, the relative error and output poisoning.

Every test draws fresh random inputs from a seed chosen for it and printed, so
pytest shows it with a failure; CLUSTERFUSION_TEST_SEED=N repeats a run.
"""

from __future__ import annotations

import math
import os
import random

import pytest
import torch

import clusterfusion  # noqa: F401  (registers the ops)


def has_supported_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0)


gpu = pytest.mark.skipif(
    not has_supported_gpu(), reason="needs a CUDA GPU with compute capability 9.0 or newer"
)

@pytest.fixture(autouse=True)
def random_seed():
    seed = int(os.environ.get("CLUSTERFUSION_TEST_SEED", random.randrange(2**31)))
    print(f"random seed {seed} (CLUSTERFUSION_TEST_SEED={seed} repeats it)")
    torch.manual_seed(seed)
    return seed


# ||out - ref|| / ||ref|| bounds against the float64 reference.
TOLERANCE = {torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5}


def make_inputs(m, hidden, ffn, dtype, device, *, bias=True, generator=None, lead=None):
    """Fresh random inputs (never zeros) of a decode step with `m` tokens (rows).

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


def reference(hidden_states, attn_output, mlp_intermediate, weight, bias):
    """float64 reference of the op, on the inputs' device."""
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
