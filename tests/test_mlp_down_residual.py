"""clusterfusion.mlp_down_residual against a float64 reference, on the CPU backend
and on the GPU, every element within its bound (conftest.assert_matches) and the
whole in norm."""

from __future__ import annotations

import math

import pytest
import torch

import clusterfusion
from conftest import (
    ELEMENT_TOLERANCE,
    TOLERANCE,
    assert_matches,
    call_poisoned,
    gpu,
    make_mlp_down_inputs,
    mlp_down_reference,
    rel_err,
)

PYTHIA_2B8 = (2560, 10240)
PYTHIA_6B9 = (4096, 16384)
# (hidden, ffn): the two Pythia sizes, other GPT-NeoX sizes, and awkward ones
# (hidden not a multiple of 16, ffn not a multiple of the 64-wide chunk).
GPU_SHAPES = [PYTHIA_2B8, PYTHIA_6B9, (512, 2048), (2048, 8192), (1000, 520), (24, 64), (4104, 1032), (8, 8)]
FUSED_M = [1, 2, 3, 8, 16]
DTYPES = [torch.float16, torch.bfloat16]


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", FUSED_M)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_fused_kernel_matches_float64(shape, m, dtype):
    hidden, ffn = shape
    inputs = make_mlp_down_inputs(m, hidden, ffn, dtype, "cuda")
    out = call_poisoned(clusterfusion.mlp_down_residual, inputs)
    assert out.dtype == dtype and out.shape == inputs["hidden_states"].shape
    assert_matches(out, mlp_down_reference(**inputs), dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_without_bias(dtype):
    inputs = make_mlp_down_inputs(3, 640, 2048, dtype, "cuda", bias=False)
    out = call_poisoned(clusterfusion.mlp_down_residual, inputs)
    assert_matches(out, mlp_down_reference(**inputs), dtype)


@gpu
@pytest.mark.parametrize("m", [17, 40])
def test_more_tokens_than_the_fused_kernel_take_the_cublas_path(m):
    inputs = make_mlp_down_inputs(m, 2560, 10240, torch.float16, "cuda")
    out = clusterfusion.mlp_down_residual(**inputs)
    assert_matches(out, mlp_down_reference(**inputs), torch.float16)


@gpu
@pytest.mark.parametrize(
    "lead,x_shape",
    [((), (10240,)), ((1,), (10240,)), ((1, 1), (1, 1, 10240)), ((2, 3), (6, 10240)), ((4, 1), (4, 1, 10240))],
    ids=["1d", "seed-layout", "hf-decode", "batch-seq", "hf-batch4"],
)
def test_input_layouts(lead, x_shape):
    m = math.prod(lead)
    inputs = make_mlp_down_inputs(m, 2560, 10240, torch.float16, "cuda", lead=lead)
    inputs["mlp_intermediate"] = inputs["mlp_intermediate"].reshape(x_shape)
    out = call_poisoned(clusterfusion.mlp_down_residual, inputs)
    assert out.shape == inputs["hidden_states"].shape
    assert_matches(out, mlp_down_reference(**inputs), torch.float16)


@gpu
def test_non_contiguous_vectors():
    base = make_mlp_down_inputs(4, 2560, 10240, torch.bfloat16, "cuda")
    wide = make_mlp_down_inputs(4, 5120, 20480, torch.bfloat16, "cuda")
    inputs = dict(
        hidden_states=wide["hidden_states"][:, ::2],
        attn_output=wide["attn_output"][:, 1::2],
        mlp_intermediate=wide["mlp_intermediate"][:, 1::2],
        weight=base["weight"],
        bias=wide["bias"][::2],
    )
    assert not inputs["hidden_states"].is_contiguous()
    out = clusterfusion.mlp_down_residual(**inputs)
    assert_matches(out, mlp_down_reference(**inputs), torch.bfloat16)


@gpu
def test_contiguous_but_misaligned_input_rows():
    inputs = make_mlp_down_inputs(2, 2560, 10240, torch.float16, "cuda")
    storage = torch.empty(2 * 10240 + 1, dtype=torch.float16, device="cuda")
    x = storage[1:].view(2, 10240).copy_(inputs["mlp_intermediate"])  # 2 bytes past alignment
    assert x.is_contiguous() and x.data_ptr() % 16 != 0
    inputs["mlp_intermediate"] = x
    out = clusterfusion.mlp_down_residual(**inputs)
    assert_matches(out, mlp_down_reference(**inputs), torch.float16)


@gpu
def test_weight_with_padded_rows():
    # Rows 16-byte aligned but longer than ffn: the kernel reads only ffn columns.
    inputs = make_mlp_down_inputs(2, 768, 3072, torch.float16, "cuda")
    padded = torch.randn(768, 3072 + 64, device="cuda", dtype=torch.float16)
    padded[:, :3072] = inputs["weight"]
    inputs["weight"] = padded[:, :3072]
    out = clusterfusion.mlp_down_residual(**inputs)
    assert_matches(out, mlp_down_reference(**inputs), torch.float16)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_seed_entry_points(dtype):
    for fn, (hidden, ffn) in [
        (clusterfusion.pythia_2b8_mlp_only, PYTHIA_2B8),
        (clusterfusion.pythia_6b9_mlp_only, PYTHIA_6B9),
    ]:
        inputs = make_mlp_down_inputs(1, hidden, ffn, dtype, "cuda")
        inputs["mlp_intermediate"] = inputs["mlp_intermediate"].reshape(ffn)  # the seed's [ffn]
        args = list(inputs.values())
        out = fn(*args)
        assert out.shape == (1, hidden)
        assert_matches(out, mlp_down_reference(**inputs), dtype)
        # The extension module keeps the seed's entry points under their old names.
        from clusterfusion import _C

        assert torch.equal(getattr(_C, fn.__name__)(*args), out)


@gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_tensors_on_second_device():
    inputs = make_mlp_down_inputs(2, 2560, 10240, torch.float16, "cuda:1")
    with torch.cuda.device(0):
        out = clusterfusion.mlp_down_residual(**inputs)
    assert out.device == torch.device("cuda:1")
    assert_matches(out, mlp_down_reference(**inputs), torch.float16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m", [1, 3, 20])
def test_cpu_backend_matches_float64(m, dtype):
    inputs = make_mlp_down_inputs(m, 256, 1024, dtype, "cpu")
    out = clusterfusion.mlp_down_residual(**inputs)
    assert out.dtype == dtype and out.shape == (m, 256)
    # Three roundings, not one: a wider norm; the per-element bounds already cover them.
    assert_matches(out, mlp_down_reference(**inputs), dtype, rel=3 * TOLERANCE[dtype])


def test_cpu_seed_entry_point_and_layouts():
    inputs = make_mlp_down_inputs(1, 2560, 10240, torch.float32, "cpu", lead=(1, 1))
    inputs["mlp_intermediate"] = inputs["mlp_intermediate"].reshape(10240)
    out = clusterfusion.pythia_2b8_mlp_only(*inputs.values())
    assert out.shape == (1, 1, 2560)
    assert_matches(out, mlp_down_reference(**inputs), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_one_wrong_element_of_4096_fails_the_bounds(dtype):
    """The norm alone passes an output with one element of 4096 off by five times
    its bound; the per-element bounds catch it and name it."""
    inputs = make_mlp_down_inputs(1, 4096, 1024, dtype, "cpu")
    ref = mlp_down_reference(**inputs)
    out = ref.to(dtype)  # correctly rounded
    assert_matches(out, ref, dtype)
    atol, rtol = ELEMENT_TOLERANCE[dtype]
    rms = ref.pow(2).mean().sqrt()
    index = int((ref[0].abs() - rms).abs().argmin())  # an element of typical size
    out[0, index] += 5 * (atol * rms + rtol * ref[0, index].abs())
    assert rel_err(out, ref) < TOLERANCE[dtype]
    with pytest.raises(AssertionError, match=rf"1 of 4096 elements differ .* at index \(0, {index}\)"):
        assert_matches(out, ref, dtype)
