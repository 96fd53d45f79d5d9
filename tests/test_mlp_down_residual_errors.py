"""clusterfusion.mlp_down_residual (and its seed entry points): bad input raises a
Python exception naming the argument, what it got and what it needs."""

from __future__ import annotations

import pytest
import torch

import clusterfusion
from conftest import gpu, make_mlp_down_inputs


def _cpu(**overrides):
    inputs = make_mlp_down_inputs(2, 64, 128, torch.float32, "cpu")
    inputs.update(overrides)
    return inputs


def _call(inputs):
    return clusterfusion.mlp_down_residual(**inputs)


@pytest.mark.parametrize(
    "overrides,exc,words",
    [
        (dict(weight=torch.randn(64 * 128)), ValueError, ["'weight'", "2-D", "[8192]"]),
        (dict(hidden_states=torch.randn(2, 63)), ValueError, ["'hidden_states'", "[..., 64]", "[2, 63]"]),
        (dict(attn_output=torch.randn(1, 64)), ValueError, ["'attn_output'", "[2, 64]", "[1, 64]"]),
        (dict(mlp_intermediate=torch.randn(2, 127)), ValueError, ["'mlp_intermediate'", "128", "[2, 127]"]),
        (dict(mlp_intermediate=torch.randn(3, 128)), ValueError, ["'mlp_intermediate'", "2 row(s)", "[3, 128]"]),
        (dict(bias=torch.randn(65)), ValueError, ["'bias'", "[64]", "[65]"]),
        (dict(bias=torch.randn(64, 1)), ValueError, ["'bias'", "[64, 1]"]),
        (dict(attn_output=torch.randn(2, 64, dtype=torch.float16)), TypeError, ["'attn_output'", "Half", "Float"]),
        (dict(bias=torch.randn(64, dtype=torch.bfloat16)), TypeError, ["'bias'", "BFloat16"]),
    ],
    ids=["weight-1d", "hidden-size", "attn-shape", "ffn-size", "row-count", "bias-size", "bias-2d", "mixed-dtype", "bias-dtype"],
)
def test_bad_shapes_and_dtypes(overrides, exc, words):
    with pytest.raises(exc) as info:
        _call(_cpu(**overrides))
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def _complex(inputs):
    return {k: (v.to(torch.complex64) if v is not None else None) for k, v in inputs.items()}


def test_unsupported_dtype_on_cpu():
    inputs = _complex(_cpu())
    with pytest.raises(TypeError, match=r"'weight' has dtype ComplexFloat.*Half, BFloat16, Float, Double"):
        _call(inputs)


def test_seed_entry_point_checks_model_size():
    inputs = make_mlp_down_inputs(1, 4096, 16384, torch.float16, "cpu")
    with pytest.raises(ValueError, match=r"pythia_2b8_mlp_only: argument 'mlp_down_weight' must have shape \[2560, 10240\]"):
        clusterfusion.pythia_2b8_mlp_only(*inputs.values())
    inputs = make_mlp_down_inputs(1, 2560, 10240, torch.float16, "cpu")
    with pytest.raises(ValueError, match=r"pythia_6b9_mlp_only: argument 'mlp_down_weight' must have shape \[4096, 16384\]"):
        clusterfusion.pythia_6b9_mlp_only(*inputs.values())


def test_transposed_weight_is_named_as_such_on_cpu():
    # The seed's README left the layout ambiguous; [ffn, hidden] must not pass
    # silently, and the message says the weight looks transposed (not that the
    # activations are wrong).
    inputs = _cpu()
    hidden, ffn = inputs["weight"].shape
    inputs["weight"] = inputs["weight"].T.contiguous()
    with pytest.raises(ValueError, match=rf"argument 'weight' looks transposed: it is \[{ffn}, {hidden}\].*"
                                         rf"\[hidden, ffn\] = \[{hidden}, {ffn}\]"):
        _call(inputs)
    inputs["hidden_states"] = inputs["hidden_states"][..., :-8]  # a plain shape error stays one
    inputs["attn_output"] = inputs["attn_output"][..., :-8]
    with pytest.raises(ValueError, match="'hidden_states'"):
        _call(inputs)


def _gpu_inputs(**overrides):
    inputs = make_mlp_down_inputs(2, 256, 1024, torch.float16, "cuda")
    inputs.update(overrides)
    return inputs


@gpu
def test_cpu_tensor_given_to_cuda_path():
    with pytest.raises(ValueError, match=r"'hidden_states' is on cpu; expected cuda:0 like 'weight'"):
        _call(_gpu_inputs(hidden_states=torch.randn(2, 256, dtype=torch.float16)))
    inputs = _gpu_inputs()
    inputs["weight"] = inputs["weight"].cpu()
    with pytest.raises(ValueError, match=r"'hidden_states' is on cuda:0; expected cpu like 'weight'"):
        _call(inputs)


@gpu
def test_float32_on_cuda_is_rejected():
    inputs = {k: v.float() for k, v in _gpu_inputs().items()}
    with pytest.raises(TypeError, match=r"'weight' has dtype Float; the CUDA implementation supports Half, BFloat16"):
        _call(inputs)


@gpu
def test_weight_layouts_the_kernel_cannot_stream():
    inputs = _gpu_inputs()
    w = inputs["weight"]
    with pytest.raises(ValueError, match=r"'weight' must have unit stride along ffn"):
        _call(dict(inputs, weight=w.T.contiguous().T))
    storage = torch.randn(256 * 1024 + 1, dtype=torch.float16, device="cuda")
    misaligned = storage[1:].view(256, 1024)
    with pytest.raises(ValueError, match=r"'weight' must start at a 16-byte aligned address"):
        _call(dict(inputs, weight=misaligned))
    odd_stride = torch.randn(256, 1028, dtype=torch.float16, device="cuda")[:, :1024]
    with pytest.raises(ValueError, match=r"row stride that is a multiple of 16 bytes; got 2056 bytes"):
        _call(dict(inputs, weight=odd_stride))


@gpu
def test_ffn_not_multiple_of_eight():
    inputs = make_mlp_down_inputs(1, 64, 100, torch.bfloat16, "cuda")
    with pytest.raises(ValueError, match=r"ffn = weight.shape\[1\] must be a multiple of 8 .*; got 100"):
        _call(inputs)


@gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_mixed_cuda_devices():
    inputs = _gpu_inputs()
    inputs["attn_output"] = inputs["attn_output"].to("cuda:1")
    with pytest.raises(ValueError, match=r"'attn_output' is on cuda:1; expected cuda:0"):
        _call(inputs)


def _reason(weight):
    return clusterfusion.mlp_down_residual_unsupported_reason(weight)


def test_unsupported_reason_is_the_ops_message_on_cpu():
    assert _reason(_cpu()["weight"]) is None
    complexes = _complex(_cpu())
    reason = _reason(complexes["weight"])
    assert reason is not None and "'weight' has dtype ComplexFloat" in reason
    with pytest.raises(TypeError) as info:
        _call(complexes)
    assert reason in str(info.value)


def test_unsupported_reason_needs_a_backend():
    with pytest.raises(NotImplementedError):
        _reason(torch.empty(4, 8, device="meta"))


@gpu
def test_unsupported_reason_is_the_ops_message_on_cuda():
    inputs = _gpu_inputs()
    assert _reason(inputs["weight"]) is None
    misaligned = torch.randn(256 * 1024 + 1, dtype=torch.float16, device="cuda")[1:].view(256, 1024)
    floats = {k: (v.float() if v is not None else None) for k, v in inputs.items()}
    for call, exc in [(dict(inputs, weight=misaligned), ValueError), (floats, TypeError)]:
        reason = _reason(call["weight"])
        assert reason is not None
        with pytest.raises(exc) as info:
            _call(call)
        assert reason in str(info.value)

