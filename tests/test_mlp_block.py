"""clusterfusion.mlp_block_residual: against a float64 reference of the whole
block (every element within its bound, see conftest.assert_matches), as a
PyTorch op (opcheck, gradients, torch.compile, CUDA graphs, determinism) and on
bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import clusterfusion
from conftest import assert_matches, gpu, opcheck_cases

OP = torch.ops.clusterfusion.mlp_block_residual.default
DTYPES = [torch.float16, torch.bfloat16]
# (hidden, ffn): Pythia-160m, 410m, 1b/1.4b, 2.8b, 6.9b, and awkward ones (not
# multiples of the 64-wide chunk or of 16 outputs).
PYTHIA = [(768, 3072), (1024, 4096), (2048, 8192), (2560, 10240), (4096, 16384)]
GPU_SHAPES = PYTHIA + [(1000, 520), (24, 64), (8, 8), (4104, 1032)]
FUSED_M = [1, 2, 3, 8, 16]
ARGS = ("hidden_states", "attn_output", "ln_weight", "ln_bias", "up_weight", "up_bias", "down_weight", "down_bias")


def make_block(m, hidden, ffn, dtype, device, *, biases=True, lead=None):
    """Fresh random inputs of one decode step's MLP block (never zeros; the
    layer input has a non-zero mean so the LayerNorm has work to do)."""
    g = torch.Generator(device=device).manual_seed(int(torch.randint(2**31, ())))
    lead = (m,) if lead is None else tuple(lead)

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, device=device) * scale + shift).to(dtype)

    return dict(
        hidden_states=rnd(*lead, hidden, shift=0.3),
        attn_output=rnd(*lead, hidden),
        ln_weight=rnd(hidden, scale=0.2, shift=1.0),
        ln_bias=rnd(hidden, scale=0.2) if biases else None,
        up_weight=rnd(ffn, hidden, scale=1 / math.sqrt(hidden)),
        up_bias=rnd(ffn, scale=0.2) if biases else None,
        down_weight=rnd(hidden, ffn, scale=1 / math.sqrt(ffn)),
        down_bias=rnd(hidden, scale=0.2) if biases else None,
    )


def block_reference(hidden_states, attn_output, ln_weight, ln_bias, up_weight, up_bias, down_weight, down_bias,
                    eps=1e-5):
    """The block in float64: LayerNorm, up, exact GELU, down, both residuals."""
    d = lambda t: None if t is None else t.double()  # noqa: E731
    h = d(hidden_states)
    normalized = F.layer_norm(h, (h.shape[-1],), d(ln_weight), d(ln_bias), eps)
    intermediate = F.gelu(F.linear(normalized, d(up_weight), d(up_bias)))
    return F.linear(intermediate, d(down_weight), d(down_bias)) + d(attn_output) + h


def call_poisoned(inputs, **kwargs):
    """The op with NaN left where its output lands (see conftest.call_poisoned)."""
    h = inputs["hidden_states"]
    poison = torch.full(h.shape, float("nan"), dtype=h.dtype, device=h.device)
    address = poison.data_ptr()
    del poison
    out = clusterfusion.mlp_block_residual(**inputs, **kwargs)
    if h.is_cuda:
        assert out.data_ptr() == address, "output did not reuse the poisoned block"
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("biases", [True, False], ids=["biases", "no-biases"])
def test_cpu_matches_float64(dtype, biases):
    inputs = make_block(3, 64, 256, dtype, "cpu", biases=biases)
    out = clusterfusion.mlp_block_residual(**inputs)
    assert out.dtype == dtype and out.shape == (3, 64)
    assert_matches(out, block_reference(**inputs), dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", FUSED_M)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_fused_kernels_match_float64(shape, m, dtype):
    inputs = make_block(m, *shape, dtype, "cuda")
    out = call_poisoned(inputs)
    assert out.dtype == dtype and out.shape == inputs["hidden_states"].shape
    assert_matches(out, block_reference(**inputs), dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("missing", ["ln_bias", "up_bias", "down_bias", "all"])
def test_without_biases(dtype, missing):
    inputs = make_block(3, 2560, 10240, dtype, "cuda")
    for name in ("ln_bias", "up_bias", "down_bias") if missing == "all" else (missing,):
        inputs[name] = None
    assert_matches(call_poisoned(inputs), block_reference(**inputs), dtype)


@gpu
def test_eps_and_non_contiguous_activations():
    inputs = make_block(4, 1024, 4096, torch.float16, "cuda", lead=(2, 2))
    wide = torch.randn(2, 2, 2048, device="cuda", dtype=torch.float16)
    wide[..., ::2] = inputs["hidden_states"]
    inputs["hidden_states"] = wide[..., ::2]  # stride 2 along hidden
    inputs["attn_output"] = inputs["attn_output"].transpose(0, 1).contiguous().transpose(0, 1)
    assert not inputs["hidden_states"].is_contiguous() and not inputs["attn_output"].is_contiguous()
    out = clusterfusion.mlp_block_residual(**inputs, eps=1e-2)
    assert out.shape == (2, 2, 1024)
    assert_matches(out, block_reference(**inputs, eps=1e-2), torch.float16)


@gpu
@pytest.mark.parametrize("m", [17, 33])
def test_more_tokens_than_the_fused_kernels_take_the_composite(m):
    inputs = make_block(m, 2560, 10240, torch.float16, "cuda")
    assert_matches(clusterfusion.mlp_block_residual(**inputs), block_reference(**inputs), torch.float16)


@gpu
@pytest.mark.parametrize("m", [1, 16])
def test_bitwise_deterministic(m):
    inputs = make_block(m, 2560, 10240, torch.bfloat16, "cuda")
    first = clusterfusion.mlp_block_residual(**inputs)
    for _ in range(20):
        assert torch.equal(clusterfusion.mlp_block_residual(**inputs), first)


@gpu
@pytest.mark.parametrize("pdl", [True, False], ids=["pdl", "no-pdl"])
def test_pinned_plans_and_pdl_compute_the_same(pdl):
    inputs = make_block(2, 2560, 10240, torch.float16, "cuda")
    plans = clusterfusion.mlp_block_residual_plan(inputs["up_weight"], inputs["down_weight"], 2)
    assert plans.up.block_n > 0 and plans.down.block_n > 0
    ref = block_reference(**inputs)
    for pin in ("auto", "64:1;auto", "auto;64:2:4", "128:2:3;96:4"):
        out = clusterfusion.mlp_block_residual(**inputs, plan=pin, pdl=pdl)
        assert_matches(out, ref, torch.float16, what=f"plan {pin}")
    with clusterfusion.tuning(block_plan="64:1;64:2:4"):
        pinned = clusterfusion.mlp_block_residual_plan(inputs["up_weight"], inputs["down_weight"], 2)
    assert (pinned.up.block_n, pinned.up.cluster_size, pinned.down.block_n, pinned.down.stages) == (64, 1, 64, 4)


@gpu
def test_cuda_graph_replays_with_new_inputs():
    inputs = make_block(1, 2560, 10240, torch.float16, "cuda")
    static = {k: v.clone() for k, v in inputs.items()}
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        clusterfusion.mlp_block_residual(**static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = clusterfusion.mlp_block_residual(**static)
    for _ in range(3):
        fresh = make_block(1, 2560, 10240, torch.float16, "cuda")
        for name in ("hidden_states", "attn_output"):
            static[name].copy_(fresh[name])
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert_matches(out, block_reference(**static), torch.float16)


@gpu
def test_torch_compile_fullgraph():
    inputs = make_block(2, 1024, 4096, torch.float16, "cuda")

    @torch.compile(fullgraph=True)
    def layer(hidden_states, attn_output, ln_weight, ln_bias, up_weight, up_bias, down_weight, down_bias):
        out = clusterfusion.mlp_block_residual(
            hidden_states, attn_output, ln_weight, ln_bias, up_weight, up_bias, down_weight, down_bias
        )
        return out * 2

    out = layer(**inputs)
    assert_matches(out, 2 * block_reference(**inputs), torch.float16)


@pytest.mark.parametrize("device,dtype,m", opcheck_cases(20))
def test_opcheck(device, dtype, m):
    inputs = make_block(m, 128, 256, dtype, device)
    torch.library.opcheck(OP, tuple(inputs.values()))
    torch.library.opcheck(OP, tuple(dict(inputs, ln_bias=None, up_bias=None, down_bias=None).values()))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=gpu)])
def test_gradients_are_the_composites(device):
    dtype = torch.float64 if device == "cpu" else torch.float32
    inputs = make_block(3, 16, 32, dtype, device) if device == "cpu" else make_block(3, 64, 128, dtype, device)
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    grad_out = torch.randn_like(inputs["hidden_states"])
    clusterfusion.mlp_block_residual(**leaves).backward(grad_out)
    ref_leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    block_reference(**ref_leaves).to(dtype).backward(grad_out)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for name in ARGS:
        assert torch.allclose(leaves[name].grad, ref_leaves[name].grad, rtol=tol, atol=tol), name
    if device == "cpu":
        args = tuple(v.detach().clone().requires_grad_() for v in inputs.values())
        assert torch.autograd.gradcheck(clusterfusion.mlp_block_residual, args)


def test_no_graph_without_gradients():
    inputs = make_block(2, 16, 32, torch.float32, "cpu")
    with torch.no_grad():
        inputs["up_weight"].requires_grad_()
        assert not clusterfusion.mlp_block_residual(**inputs).requires_grad


@pytest.mark.parametrize(
    "change, exc, words",
    [
        (dict(down_weight=lambda i: i["down_weight"].t()), ValueError, "'down_weight' must have shape [16, 32]"),
        (dict(up_weight=lambda i: i["up_weight"][0]), ValueError, "'up_weight' must be 2-D [ffn, hidden]"),
        (dict(hidden_states=lambda i: i["hidden_states"][:, :8]), ValueError, "'hidden_states' must have shape [..., 16]"),
        (dict(attn_output=lambda i: i["attn_output"][:1]), ValueError, "'attn_output' must have the shape"),
        (dict(ln_weight=lambda i: i["ln_weight"][:8]), ValueError, "'ln_weight' must have shape [16]"),
        (dict(ln_bias=lambda i: i["ln_bias"].view(4, 4)), ValueError, "'ln_bias' must have shape [16]"),
        (dict(up_bias=lambda i: i["up_bias"][:16]), ValueError, "'up_bias' must have shape [32]"),
        (dict(down_bias=lambda i: i["down_bias"][:4]), ValueError, "'down_bias' must have shape [16]"),
        (dict(ln_weight=lambda i: i["ln_weight"].double()), TypeError, "'ln_weight' has dtype Double"),
        (dict(up_bias=lambda i: i["up_bias"].half()), TypeError, "'up_bias' has dtype Half"),
        (dict(up_weight=lambda i: i["up_weight"].int(), down_weight=lambda i: i["down_weight"].int()), TypeError,
         "'hidden_states' has dtype Float; expected Int"),
    ],
)
def test_bad_input_names_the_argument(change, exc, words):
    inputs = make_block(2, 16, 32, torch.float32, "cpu")
    inputs.update({k: f(inputs) for k, f in change.items()})
    with pytest.raises(exc, match="clusterfusion.mlp_block_residual") as info:
        clusterfusion.mlp_block_residual(**inputs)
    assert words in str(info.value)


def test_bad_eps_and_plan():
    inputs = make_block(2, 16, 32, torch.float32, "cpu")
    with pytest.raises(ValueError, match="'eps' must be finite and >= 0; got -1"):
        clusterfusion.mlp_block_residual(**inputs, eps=-1.0)
    with pytest.raises(ValueError, match=r"'plan' must be \"auto\" or \"UP;DOWN\""):
        clusterfusion.mlp_block_residual(**inputs, plan="64:1")
    with pytest.raises(ValueError, match=r"'plan \(down\)' must be"):
        clusterfusion.mlp_block_residual(**inputs, plan="64:1;7:1")
    with pytest.raises(ValueError, match="launch plans exist for CUDA weights only"):
        clusterfusion.mlp_block_residual_plan(inputs["up_weight"], inputs["down_weight"])
    assert clusterfusion.mlp_block_residual_unsupported_reason(inputs["up_weight"], inputs["down_weight"]) is None
    assert "supports" in clusterfusion.mlp_block_residual_unsupported_reason(
        inputs["up_weight"].int(), inputs["down_weight"].int()
    )


@gpu
def test_bad_input_on_cuda():
    inputs = make_block(2, 256, 512, torch.float16, "cuda")
    with pytest.raises(TypeError, match="'up_weight' has dtype Float; the CUDA implementation supports Half, BFloat16"):
        clusterfusion.mlp_block_residual(**{k: v.float() for k, v in inputs.items()})
    with pytest.raises(ValueError, match="'ln_weight' is on cpu; expected cuda:0"):
        clusterfusion.mlp_block_residual(**dict(inputs, ln_weight=inputs["ln_weight"].cpu()))
    strided = torch.empty(512, 512, device="cuda", dtype=torch.float16)[:, ::2]
    strided.copy_(inputs["up_weight"])
    with pytest.raises(ValueError, match="'up_weight' must have unit stride along hidden"):
        clusterfusion.mlp_block_residual(**dict(inputs, up_weight=strided))
    odd = make_block(2, 12, 512, torch.float16, "cuda")
    with pytest.raises(ValueError, match=r"hidden = up_weight.shape\[1\] must be a multiple of 8"):
        clusterfusion.mlp_block_residual(**odd)
    reason = clusterfusion.mlp_block_residual_unsupported_reason(odd["up_weight"], odd["down_weight"])
    assert "multiple of 8" in reason
    wide = make_block(1, 32768 + 8, 8, torch.float16, "cuda")
    with pytest.raises(ValueError, match=r"hidden = up_weight.shape\[1\] must be at most 32768"):
        clusterfusion.mlp_block_residual(**wide)
    assert clusterfusion.mlp_block_residual_unsupported_reason(inputs["up_weight"], inputs["down_weight"]) is None
