"""clusterfusion.attention_block: against a float64 reference built from
HuggingFace's own GPT-NeoX functions (rotary embedding, eager attention), every
element within its bound (conftest.assert_matches) and the whole in norm; long
contexts without biases and mask rows at every head size; the cache contents
after the call, as a PyTorch op (opcheck, gradients, torch.compile, CUDA graphs
replayed across positions, determinism) and on bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import clusterfusion
from conftest import assert_matches, call_poisoned, gpu

OP = torch.ops.clusterfusion.attention_block.default
DTYPES = [torch.float16, torch.bfloat16]
# Several roundings to the input dtype (q, k, v, the rotated q and k, the
# attention output) on the way: a little above one rounding's error. The
# reference's softmax is HuggingFace's, in float32 whatever the input dtype.
TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5, torch.float64: 1e-6}
# Per-element (atol in units of the reference's RMS, rtol), as conftest.ELEMENT_TOLERANCE
# with twice its atol for those roundings: emulating them in float64 (Pythia
# shapes, positions up to 4095, with and without biases) needs at most 1.5e-3
# (fp16) and 1.1e-2 (bf16) of atol at this rtol, the bounds leave about 3x.
# fp32 and fp64 run on the CPU, against the reference's float32 softmax: 1e-5
# leaves 5x over the worst seen, gradients of the fp64 composite included.
ELEMENT_TOLERANCE = {torch.float16: (4e-3, 4e-3), torch.bfloat16: (3.2e-2, 3.2e-2), torch.float32: (1e-5, 1e-5),
                     torch.float64: (1e-5, 1e-5)}
# (hidden, heads, rotary_dims): Pythia-160m/410m (head_dim 64), 2.8b (80), 6.9b (128), and head_dim 96.
PYTHIA = {"160m": (768, 12, 16), "410m": (1024, 16, 16), "2.8b": (2560, 32, 20), "6.9b": (4096, 32, 32),
          "hd96": (768, 8, 24)}
POSITIONS = [0, 1, 17, 1000, 4095]
# One model of each head size the kernels serve: 64, 80, 96 and 128.
HEAD_SIZES = ["160m", "2.8b", "hd96", "6.9b"]


def rotary_tables(position, rotary_dims, dtype, device, base=10000.0):
    """cos and sin [1, 1, rotary_dims] for `position`, as GPT-NeoX's rotary module builds them."""
    inv_freq = 1.0 / base ** (torch.arange(0, rotary_dims, 2, dtype=torch.float64) / rotary_dims)
    angles = torch.cat([position * inv_freq, position * inv_freq])
    return (angles.cos().to(dtype).to(device).reshape(1, 1, -1), angles.sin().to(dtype).to(device).reshape(1, 1, -1))


def make_step(hidden, heads, rotary_dims, max_len, position, dtype, device, *, biases=True):
    """Fresh random inputs of one decode step's attention block. The caches are
    random everywhere (also past the position: nothing there may be read)."""
    g = torch.Generator(device=device).manual_seed(int(torch.randint(2**31, ())))
    head_dim = hidden // heads

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, device=device) * scale + shift).to(dtype)

    cos, sin = rotary_tables(position, rotary_dims, dtype, device)
    return dict(
        hidden_states=rnd(1, 1, hidden, shift=0.3),
        ln_weight=rnd(hidden, scale=0.2, shift=1.0),
        ln_bias=rnd(hidden, scale=0.2) if biases else None,
        qkv_weight=rnd(3 * hidden, hidden, scale=1 / math.sqrt(hidden)),
        qkv_bias=rnd(3 * hidden, scale=0.2) if biases else None,
        dense_weight=rnd(hidden, hidden, scale=1 / math.sqrt(hidden)),
        dense_bias=rnd(hidden, scale=0.2) if biases else None,
        cos=cos,
        sin=sin,
        key_cache=rnd(1, heads, max_len, head_dim),
        value_cache=rnd(1, heads, max_len, head_dim),
        cache_position=torch.tensor(position, device=device),
    )


def hf_reference(hidden_states, ln_weight, ln_bias, qkv_weight, qkv_bias, dense_weight, dense_bias, cos, sin,
                 key_cache, value_cache, cache_position, attention_mask=None, eps=1e-5):
    """The step in float64 with HuggingFace's GPT-NeoX functions; returns the
    output and the caches as they must be afterwards (the inputs are not touched)."""
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb, eager_attention_forward

    d = lambda t: None if t is None else t.double()  # noqa: E731
    position = int(cache_position)
    hidden = qkv_weight.shape[1]
    heads, head_dim = key_cache.shape[1], key_cache.shape[3]
    h = d(hidden_states).reshape(1, 1, hidden)
    x = F.layer_norm(h, (hidden,), d(ln_weight), d(ln_bias), eps)
    qkv = F.linear(x, d(qkv_weight), d(qkv_bias)).view(1, 1, heads, 3 * head_dim).transpose(1, 2)
    query, key, value = qkv.chunk(3, dim=-1)
    query, key = apply_rotary_pos_emb(query, key, d(cos).reshape(1, 1, -1), d(sin).reshape(1, 1, -1))
    keys, values = d(key_cache).clone(), d(value_cache).clone()
    keys[:, :, position] = key[:, :, 0]
    values[:, :, position] = value[:, :, 0]
    mask = None
    if attention_mask is not None:
        row = attention_mask.reshape(-1)[: position + 1]
        mask = (torch.where(row, 0.0, -math.inf) if row.dtype == torch.bool else d(row)).reshape(1, 1, 1, -1)
    attn, _ = eager_attention_forward(
        torch.nn.Module().eval(), query, keys[:, :, : position + 1], values[:, :, : position + 1], mask,
        scaling=head_dim**-0.5,
    )
    out = F.linear(attn.reshape(1, 1, hidden), d(dense_weight), d(dense_bias))
    return out.reshape(hidden_states.shape), keys, values


def mask_row(kind, max_len, position, dtype, device, padding=0):
    """A random mask row [1, 1, 1, max_len] that keeps about 70% of the positions
    past the first `padding` (masked, as a left-padded prompt's are) and always
    `position`: bool (True attends), or random additive terms with
    ``finfo(dtype).min`` where masked, in `dtype` ("additive") or in float32 ("float32")."""
    keep = torch.rand(max_len, device=device) > 0.3
    keep[:padding] = False
    keep[position] = True
    if kind == "bool":
        return keep.reshape(1, 1, 1, -1)
    row = torch.where(keep, torch.randn(max_len, device=device), torch.finfo(dtype).min)
    return row.to(dtype if kind == "additive" else torch.float32).reshape(1, 1, 1, -1)


def check_step(inputs, out, expected, position):
    """The output, the appended cache rows (each within the bounds of the input
    dtype) and the untouched rest of the caches."""
    ref_out, ref_keys, ref_values = expected
    dtype = inputs["hidden_states"].dtype
    assert out.shape == inputs["hidden_states"].shape and out.dtype == dtype

    def within_bounds(got, ref, what):
        assert_matches(got, ref, dtype, rel=TOLERANCE[dtype], element=ELEMENT_TOLERANCE[dtype], what=what)

    within_bounds(out, ref_out, "output")
    for name, ref in (("key_cache", ref_keys), ("value_cache", ref_values)):
        cache = inputs[name]
        within_bounds(cache[:, :, position], ref[:, :, position], f"{name} at position {position}")
        others = torch.ones(cache.shape[2], dtype=torch.bool)
        others[position] = False
        assert torch.equal(cache[:, :, others].double(), ref[:, :, others]), f"{name} changed outside the position"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("position", [0, 1, 17, 63])
def test_cpu_matches_huggingface(dtype, position):
    inputs = make_step(128, 2, 16, 64, position, dtype, "cpu")
    expected = hf_reference(**inputs)
    check_step(inputs, clusterfusion.attention_block(**inputs), expected, position)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("model", list(PYTHIA))
def test_kernels_match_huggingface(model, position, dtype):
    hidden, heads, rotary = PYTHIA[model]
    inputs = make_step(hidden, heads, rotary, 4096, position, dtype, "cuda")
    expected = hf_reference(**inputs)
    check_step(inputs, call_poisoned(clusterfusion.attention_block, inputs), expected, position)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("position", [1000, 2047, 4095])
@pytest.mark.parametrize("model", HEAD_SIZES)
def test_long_context_without_biases(model, position, dtype):
    """Long contexts with the attention alone in the output: the dense bias, the
    largest term of the output with biases, would hide errors of the attention."""
    inputs = make_step(*PYTHIA[model], 4096, position, dtype, "cuda", biases=False)
    expected = hf_reference(**inputs)
    check_step(inputs, call_poisoned(clusterfusion.attention_block, inputs), expected, position)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["bool", "additive"])
@pytest.mark.parametrize("position", [0, 17, 1000, 4095])
@pytest.mark.parametrize("model", HEAD_SIZES)
def test_mask_rows_at_every_head_size(model, position, kind, dtype):
    """Without biases; the first half of the context masked (left padding), so at
    position 1000 the attention workers of the first chunks see no unmasked position."""
    inputs = make_step(*PYTHIA[model], 4096, position, dtype, "cuda", biases=False)
    inputs["attention_mask"] = mask_row(kind, 4096, position, dtype, "cuda", padding=position // 2)
    expected = hf_reference(**inputs)
    check_step(inputs, call_poisoned(clusterfusion.attention_block, inputs), expected, position)


@gpu
@pytest.mark.parametrize("max_len", [1, 64, 65, 300])
def test_short_and_odd_cache_lengths(max_len):
    for position in sorted({0, max_len // 2, max_len - 1}):
        inputs = make_step(2560, 32, 20, max_len, position, torch.float16, "cuda", biases=False)
        expected = hf_reference(**inputs)
        check_step(inputs, call_poisoned(clusterfusion.attention_block, inputs), expected, position)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=gpu)])
@pytest.mark.parametrize("kind", ["bool", "additive", "float32"])
def test_mask_row(device, kind):
    dtype = torch.float16 if device == "cuda" else torch.float32
    position, max_len = 200, 256
    inputs = make_step(768, 12, 16, max_len, position, dtype, device)
    inputs["attention_mask"] = mask_row(kind, max_len, position, dtype, device)
    expected = hf_reference(**inputs)
    check_step(inputs, clusterfusion.attention_block(**inputs), expected, position)


@gpu
def test_bitwise_deterministic():
    inputs = make_step(2560, 32, 20, 4096, 3000, torch.bfloat16, "cuda")
    caches = (inputs["key_cache"].clone(), inputs["value_cache"].clone())
    first = clusterfusion.attention_block(**inputs)
    for _ in range(5):
        inputs["key_cache"].copy_(caches[0])
        inputs["value_cache"].copy_(caches[1])
        assert torch.equal(clusterfusion.attention_block(**inputs), first)


@gpu
def test_graph_replays_as_the_position_advances():
    """One captured step, the position and the rotary tables advanced on the device between replays."""
    max_len = 2048
    inputs = make_step(2560, 32, 20, max_len, 0, torch.float16, "cuda")
    static_out = None
    clusterfusion.attention_block(**inputs)  # plans and tensor maps before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = clusterfusion.attention_block(**inputs)
    for position in [0, 1, 2, 63, 64, 65, 1000, max_len - 1]:
        cos, sin = rotary_tables(position, 20, torch.float16, "cuda")
        inputs["cos"].copy_(cos)
        inputs["sin"].copy_(sin)
        inputs["cache_position"].fill_(position)
        inputs["hidden_states"].normal_()
        expected = hf_reference(**inputs)
        graph.replay()
        check_step(inputs, static_out, expected, position)


# On CUDA an out-of-range position is a device-side assert: tests/test_device_errors.py
# runs it in a child process, since the assert ends the CUDA context.
def test_cpu_out_of_range_position_raises():
    inputs = make_step(128, 2, 16, 64, 0, torch.float32, "cpu")
    inputs["cache_position"].fill_(64)
    with pytest.raises(ValueError, match=r"'cache_position' holds 64; the caches hold positions \[0, 64\)"):
        clusterfusion.attention_block(**inputs)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=gpu)])
def test_torch_compile_fullgraph(device):
    dtype = torch.float16 if device == "cuda" else torch.float32
    inputs = make_step(768, 12, 16, 256, 100, dtype, device)
    expected = hf_reference(**inputs)
    compiled = torch.compile(lambda kw: clusterfusion.attention_block(**kw), fullgraph=True)
    check_step(inputs, compiled(inputs), expected, 100)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=gpu)])
def test_opcheck(device):
    dtype = torch.float16 if device == "cuda" else torch.float32
    inputs = make_step(256, 4, 16, 128, 70, dtype, device)
    inputs["attention_mask"] = torch.ones(1, 1, 1, 128, dtype=torch.bool, device=device)
    torch.library.opcheck(OP, tuple(inputs.values()))
    torch.library.opcheck(OP, tuple(dict(inputs, ln_bias=None, qkv_bias=None, dense_bias=None).values()))


def test_gradients_flow_as_through_the_composite():
    inputs = make_step(64, 2, 16, 16, 5, torch.float64, "cpu")
    grads = {}
    for run in ("op", "reference"):
        leaves = {k: v.detach().clone() for k, v in inputs.items()}
        for name in ("hidden_states", "qkv_weight", "dense_weight", "ln_weight"):
            leaves[name].requires_grad_()
        out = clusterfusion.attention_block(**leaves) if run == "op" else hf_reference(**leaves)[0]
        out.sum().backward()
        grads[run] = {n: leaves[n].grad for n in ("hidden_states", "qkv_weight", "dense_weight", "ln_weight")}
    for name, grad in grads["op"].items():
        assert grad is not None, name
        assert_matches(grad, grads["reference"][name], torch.float64, rel=TOLERANCE[torch.float64],
                       element=ELEMENT_TOLERANCE[torch.float64], what=f"gradient of {name}")


@gpu
def test_plan_query_and_pins():
    inputs = make_step(2560, 32, 20, 256, 10, torch.float16, "cuda")
    plans = clusterfusion.attention_block_plan(inputs["qkv_weight"], inputs["dense_weight"])
    assert plans.qkv.block_n > 0 and plans.dense.block_n > 0
    pinned = clusterfusion.attention_block_plan(inputs["qkv_weight"], inputs["dense_weight"], plan="64:2;32:4")
    assert (pinned.qkv.block_n, pinned.qkv.cluster_size, pinned.dense.block_n, pinned.dense.cluster_size) == (64, 2, 32, 4)
    expected = hf_reference(**inputs)
    with clusterfusion.tuning(attention_plan="64:2;32:4", pdl=False):
        check_step(inputs, clusterfusion.attention_block(**inputs), expected, 10)


def test_unsupported_reason():
    w = torch.zeros(3 * 64, 64)
    assert clusterfusion.attention_block_unsupported_reason(w, torch.zeros(64, 64), 64) is None
    reason = clusterfusion.attention_block_unsupported_reason(w.to(torch.int32), torch.zeros(64, 64), 64)
    assert "dtype" in reason


# ---- bad input ---------------------------------------------------------------------------


def _bad(**changes):
    inputs = make_step(128, 2, 16, 64, 3, torch.float32, "cpu")
    for name, change in changes.items():
        inputs[name] = change(inputs[name]) if callable(change) else change
    return inputs


@pytest.mark.parametrize(
    "changes, error, match",
    [
        (dict(qkv_weight=lambda w: w[:-1]), ValueError, r"'qkv_weight' must be \[3 \* hidden, hidden\]"),
        (dict(dense_weight=lambda w: w[:, :-1]), ValueError, r"'dense_weight' must have shape \[128, 128\]"),
        (dict(hidden_states=lambda h: h.expand(1, 2, 128)), ValueError, r"'hidden_states' must hold one token"),
        (dict(ln_weight=lambda w: w[:-1]), ValueError, r"'ln_weight' must have shape \[128\]"),
        (dict(qkv_bias=lambda b: b[:-1]), ValueError, r"'qkv_bias' must have shape \[384\]"),
        (dict(key_cache=lambda c: c[0]), ValueError, r"'key_cache' must have shape \[1, heads, max_len, head_dim\]"),
        (dict(key_cache=lambda c: c.reshape(1, 2, 128, 32)), ValueError, r"heads \* head_dim = hidden = 128"),
        (dict(value_cache=lambda c: c[:, :, :32]), ValueError, r"'value_cache' must have the shape of key_cache"),
        (dict(key_cache=lambda c: c.transpose(2, 3).contiguous().transpose(2, 3)), ValueError, r"must be contiguous"),
        (dict(cos=lambda c: c[..., :15]), ValueError, r"rotary_dims = cos.shape\[-1\] must be even"),
        (dict(cos=lambda c: c.expand(1, 2, 16)), ValueError, r"'cos' must hold one row"),
        (dict(sin=lambda s: s[..., :8]), ValueError, r"'sin' must have the shape of cos"),
        (dict(cache_position=lambda p: p.to(torch.int32)), TypeError, r"'cache_position' must be int64"),
        (dict(cache_position=lambda p: p.expand(2)), ValueError, r"'cache_position' must hold one position"),
        (dict(attention_mask=torch.ones(1, 1, 1, 63, dtype=torch.bool)), ValueError, r"max_len = 64"),
        (dict(attention_mask=torch.ones(64, dtype=torch.int64)), TypeError, r"'attention_mask' must be bool"),
        (dict(dense_weight=lambda w: w.double()), TypeError, r"'dense_weight' has dtype"),
        (dict(key_cache=lambda c: c.half()), TypeError, r"'key_cache' has dtype"),
    ],
)
def test_bad_input_names_the_argument(changes, error, match):
    with pytest.raises(error, match=match):
        clusterfusion.attention_block(**_bad(**changes))


def test_bad_eps_and_plan():
    with pytest.raises(ValueError, match=r"'eps' must be finite"):
        clusterfusion.attention_block(**_bad(), eps=-1.0)
    with pytest.raises(ValueError, match=r"'plan' must be \"auto\" or \"QKV;DENSE\""):
        clusterfusion.attention_block(**_bad(), plan="64:2")


def test_a_python_int_cache_position_is_a_type_error():
    step = make_step(64, 4, 8, 16, 3, torch.float32, "cpu")
    step["cache_position"] = 3
    with pytest.raises(TypeError, match=r"argument 'cache_position' must be an int64 tensor.*got int 3"):
        clusterfusion.attention_block(**step)


@gpu
def test_cuda_rejections():
    inputs = make_step(128, 2, 16, 64, 3, torch.float16, "cuda")
    with pytest.raises(TypeError, match=r"'qkv_weight' has dtype Float; the CUDA implementation supports Half, BFloat16"):
        clusterfusion.attention_block(**{k: v.float() if v.is_floating_point() else v for k, v in inputs.items()})
    odd = make_step(256, 8, 16, 64, 3, torch.float16, "cuda")  # head_dim 32
    with pytest.raises(ValueError, match=r"head_dim = key_cache.shape\[3\] must be 64, 80, 96 or 128"):
        clusterfusion.attention_block(**odd)
    with pytest.raises(ValueError, match=r"'cache_position' is on cpu"):
        clusterfusion.attention_block(**dict(inputs, cache_position=torch.tensor(3)))
