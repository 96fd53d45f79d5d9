"""What a PyTorch op must honour, for clusterfusion.mlp_down_residual: opcheck,
torch.compile, CUDA graphs, determinism."""

from __future__ import annotations

import pytest
import torch

import clusterfusion
from conftest import TOLERANCE, assert_matches, gpu, make_mlp_down_inputs, mlp_down_reference, opcheck_cases

OP = torch.ops.clusterfusion.mlp_down_residual.default


@pytest.mark.parametrize("device,dtype,m", opcheck_cases(24))
def test_opcheck(device, dtype, m):
    inputs = make_mlp_down_inputs(m, 256, 512, dtype, device)
    torch.library.opcheck(OP, tuple(inputs.values()))
    no_bias = dict(inputs, bias=None)
    torch.library.opcheck(OP, tuple(no_bias.values()))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_gradcheck_float64_on_cpu(bias):
    inputs = make_mlp_down_inputs(3, 16, 24, torch.float64, "cpu", bias=bias, lead=(1, 3))
    args = tuple(t.requires_grad_() if t is not None else None for t in inputs.values())
    assert torch.autograd.gradcheck(clusterfusion.mlp_down_residual, args)
    torch.library.opcheck(OP, args)


def test_gradients_reach_only_what_requires_them():
    inputs = make_mlp_down_inputs(2, 16, 24, torch.float32, "cpu")
    inputs["weight"].requires_grad_()
    out = clusterfusion.mlp_down_residual(**inputs)
    out.sum().backward()
    assert inputs["weight"].grad is not None
    assert all(t.grad is None for k, t in inputs.items() if k != "weight" and t is not None)
    with torch.no_grad():
        assert not clusterfusion.mlp_down_residual(**inputs).requires_grad


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_gradients_match_f_linear(dtype):
    inputs = make_mlp_down_inputs(3, 256, 512, dtype, "cuda")
    grad_out = torch.randn(3, 256, device="cuda", dtype=dtype)

    def grads(fn):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        fn(**leaves).backward(grad_out)
        return {k: v.grad for k, v in leaves.items()}

    def pytorch(hidden_states, attn_output, mlp_intermediate, weight, bias):
        return torch.nn.functional.linear(mlp_intermediate, weight, bias) + attn_output + hidden_states

    got, expected = grads(clusterfusion.mlp_down_residual), grads(pytorch)
    for name in inputs:
        assert_matches(got[name], expected[name], dtype, what=f"gradient of {name}")


def _decoder_residual(h, a, x, w, b):
    # The op inside surrounding work, as a compiled decoder would see it.
    return clusterfusion.mlp_down_residual(h * 1.0, a, torch.nn.functional.gelu(x), w, b) * 0.5


@pytest.mark.parametrize(
    "device,dtype", [("cpu", torch.float32), pytest.param("cuda", torch.float16, marks=gpu)]
)
def test_torch_compile_fullgraph(device, dtype):
    torch._dynamo.reset()
    compiled = torch.compile(_decoder_residual, fullgraph=True)
    inputs = make_mlp_down_inputs(2, 512, 2048, dtype, device)
    args = tuple(inputs.values())
    out = compiled(*args)
    h, a, x, w, b = args
    ref = 0.5 * mlp_down_reference(h, a, torch.nn.functional.gelu(x.float()).to(dtype), w, b)
    assert_matches(out, ref, dtype, rel=3 * TOLERANCE[dtype])


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m", [1, 16])
def test_bitwise_deterministic(m, dtype):
    inputs = make_mlp_down_inputs(m, 2560, 10240, dtype, "cuda")
    first = clusterfusion.mlp_down_residual(**inputs)
    for _ in range(5):
        assert torch.equal(clusterfusion.mlp_down_residual(**inputs), first)


def _chain(layers, first_input):
    """Runs the layers back to back, each reading the previous output as its
    input rows and its hidden state (hidden == ffn), so a launch that read
    either before the previous kernel finished would see stale or NaN data."""
    outs, x = [], first_input
    for layer in layers:
        x = clusterfusion.mlp_down_residual(x, layer["attn_output"], x, layer["weight"], layer["bias"])
        outs.append(x)
    return outs


def _check_chain(layers, first_input, outs, dtype):
    x = first_input
    for layer, out in zip(layers, outs):
        expected = mlp_down_reference(x, layer["attn_output"], x, layer["weight"], layer["bias"])
        assert_matches(out, expected, dtype)
        x = out


@gpu
@pytest.mark.parametrize("graphed", [False, True], ids=["eager", "graph"])
def test_back_to_back_launches_wait_for_the_previous_output(graphed):
    # The next launch starts streaming its weights while this one is still
    # running (programmatic dependent launch); everything it reads from us
    # must come after that wait.
    dtype, width = torch.float16, 2048
    layers = [make_mlp_down_inputs(1, width, width, dtype, "cuda") for _ in range(8)]
    first = make_mlp_down_inputs(1, width, width, dtype, "cuda")["hidden_states"]
    if not graphed:
        _check_chain(layers, first, _chain(layers, first), dtype)
        return
    _chain(layers, first)  # plans and tensor maps outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = _chain(layers, first)
    for _ in range(3):
        first.copy_(make_mlp_down_inputs(1, width, width, dtype, "cuda")["hidden_states"])
        for out in outs:
            out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        _check_chain(layers, first, outs, dtype)


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_graph_capture_and_replay_with_new_values(dtype):
    static = make_mlp_down_inputs(2, 2560, 10240, dtype, "cuda")
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture (plans, tensor maps)
        clusterfusion.mlp_down_residual(**static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = clusterfusion.mlp_down_residual(**static)
        chained = clusterfusion.mlp_down_residual(out, static["attn_output"], static["mlp_intermediate"], static["weight"], static["bias"])
    for _ in range(3):
        fresh = make_mlp_down_inputs(2, 2560, 10240, dtype, "cuda")
        for name, t in static.items():
            t.copy_(fresh[name])
        out.fill_(float("nan"))
        chained.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert_matches(out, mlp_down_reference(**fresh), dtype)
        expected_chained = mlp_down_reference(out, fresh["attn_output"], fresh["mlp_intermediate"], fresh["weight"], fresh["bias"])
        assert_matches(chained, expected_chained, dtype)
