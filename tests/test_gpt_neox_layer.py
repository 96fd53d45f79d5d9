"""clusterfusion.gpt_neox_layer: the whole parallel-residual decode layer against the
float64 layer (CPU in every dtype, CUDA in fp16 and bf16), the cache append, the
layer plan's interpreter, errors naming the layer's own arguments, opcheck and
torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import clusterfusion
from clusterfusion._layer_plan import LayerShape, deal, run_layer_plan
from conftest import assert_matches, call_poisoned, gpu
from test_attention_block import make_step, mask_row
from test_layer_plan import reference_layer

HIDDEN, HEADS, FFN, ROTARY, MAX_LEN = 128, 4, 512, 8, 160


def make_layer(position, dtype, device, *, biases=True, shape=(HIDDEN, HEADS, FFN, ROTARY), max_len=MAX_LEN):
    """One decode step's layer inputs: the attention block's (its LayerNorm renamed) and the MLP block's."""
    hidden, heads, ffn, rotary = shape
    step = make_step(hidden, heads, rotary, max_len, position, dtype, device, biases=biases)
    g = torch.Generator(device=device).manual_seed(int(torch.randint(2**31, ())))

    def rnd(*size, scale=1.0, shift=0.0):
        return (torch.randn(*size, generator=g, device=device) * scale + shift).to(dtype)

    step["attn_ln_weight"], step["attn_ln_bias"] = step.pop("ln_weight"), step.pop("ln_bias")
    return dict(
        **step,
        mlp_ln_weight=rnd(hidden, scale=0.2, shift=1.0), mlp_ln_bias=rnd(hidden, scale=0.2) if biases else None,
        up_weight=rnd(ffn, hidden, scale=hidden**-0.5), up_bias=rnd(ffn, scale=0.2) if biases else None,
        down_weight=rnd(hidden, ffn, scale=ffn**-0.5), down_bias=rnd(hidden, scale=0.2) if biases else None,
    )


def expected(inputs, mask=None):
    step = {k: v for k, v in inputs.items() if not k.startswith(("mlp_", "up_", "down_"))}
    step["ln_weight"], step["ln_bias"] = step.pop("attn_ln_weight"), step.pop("attn_ln_bias")
    mlp = {k: v for k, v in inputs.items() if k.startswith(("mlp_", "up_", "down_"))}
    return reference_layer({k: v.cpu() if torch.is_tensor(v) else v for k, v in step.items()},
                           {k: None if v is None else v.cpu() for k, v in mlp.items()}, mask)


def check(inputs, out, reference, position):
    dtype = inputs["hidden_states"].dtype
    ref_out, keys, values = reference
    assert out.dtype == dtype and out.shape == inputs["hidden_states"].shape
    assert_matches(out.cpu(), ref_out, dtype, what="layer output")
    for name, ref in (("key_cache", keys), ("value_cache", values)):
        cache = inputs[name].cpu()
        assert_matches(cache[:, :, position], ref[:, :, position], dtype, what=f"{name} at {position}")
        others = torch.ones(cache.shape[2], dtype=torch.bool)
        others[position] = False
        assert torch.equal(cache[:, :, others].double(), ref[:, :, others]), f"{name} changed outside the position"


def run(inputs, mask=None, layer_plan="auto"):
    return clusterfusion.gpt_neox_layer(**inputs, attention_mask=mask, layer_plan=layer_plan)


def one_launch(inputs, mask=None):
    return run(inputs, mask, layer_plan="one_launch")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("position, masked, biases", [(0, False, True), (63, False, False), (159, True, True)])
def test_cpu_matches_the_float64_layer(dtype, position, masked, biases):
    inputs = make_layer(position, dtype, "cpu", biases=biases)
    mask = mask_row("bool", MAX_LEN, position, dtype, "cpu", padding=2) if masked else None
    reference = expected(inputs, mask)
    check(inputs, run(inputs, mask), reference, position)


@gpu
@pytest.mark.parametrize("layer_plan", ["auto", "one_launch", "blocks"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("position", [0, 100, 159])
def test_cuda_matches_the_float64_layer(dtype, position, layer_plan):
    inputs = make_layer(position, dtype, "cuda", shape=(256, 4, 1024, 16))  # head_dim 64: the CUDA kernels serve it
    reference = expected(inputs)
    check(inputs, clusterfusion.gpt_neox_layer(**inputs, layer_plan=layer_plan), reference, position)


def test_equals_the_layer_plan_interpreter_in_float64():
    position = 130
    inputs = make_layer(position, torch.float64, "cpu")
    clones = {k: v.clone() if k.endswith("_cache") else v for k, v in inputs.items()}
    out = run(inputs)
    plan = deal(LayerShape(HIDDEN, HEADS, FFN, ROTARY), 8, 4)
    by_plan = run_layer_plan(
        plan, clones["hidden_states"], clones["attn_ln_weight"], clones["attn_ln_bias"], clones["qkv_weight"],
        clones["qkv_bias"], clones["dense_weight"], clones["dense_bias"], clones["mlp_ln_weight"],
        clones["mlp_ln_bias"], clones["up_weight"], clones["up_bias"], clones["down_weight"], clones["down_bias"],
        clones["cos"], clones["sin"], clones["key_cache"], clones["value_cache"], position)
    assert_matches(by_plan, out.detach(), torch.float64, what="the plan's layer")
    for name in ("key_cache", "value_cache"):
        assert_matches(clones[name], inputs[name], torch.float64, what=f"the plan's {name}")


@pytest.mark.parametrize("name", ["attn_ln_weight", "attn_ln_bias", "mlp_ln_weight", "mlp_ln_bias"])
def test_a_layer_norm_parameter_of_the_wrong_shape_names_the_layers_argument(name):
    inputs = make_layer(3, torch.float32, "cpu")
    inputs[name] = torch.ones(HIDDEN + 1)
    with pytest.raises(ValueError, match=f"clusterfusion.gpt_neox_layer: argument '{name}' must have shape "
                                         rf"\[{HIDDEN}\]"):
        run(inputs)


def test_a_python_int_cache_position_is_a_type_error():
    inputs = make_layer(3, torch.float32, "cpu")
    inputs["cache_position"] = 3
    with pytest.raises(TypeError, match="gpt_neox_layer: argument 'cache_position' must be an int64 tensor"):
        run(inputs)


def test_opcheck():
    inputs = make_layer(5, torch.float32, "cpu")
    args = [inputs[k] for k in ("hidden_states", "attn_ln_weight", "attn_ln_bias", "qkv_weight", "qkv_bias",
                                "dense_weight", "dense_bias", "mlp_ln_weight", "mlp_ln_bias", "up_weight", "up_bias",
                                "down_weight", "down_bias", "cos", "sin", "key_cache", "value_cache",
                                "cache_position")]
    torch.library.opcheck(torch.ops.clusterfusion.gpt_neox_layer.default, args)


def test_torch_compile_fullgraph():
    inputs = make_layer(7, torch.float32, "cpu")
    eager_inputs = {k: v.clone() if k.endswith("_cache") else v for k, v in inputs.items()}
    compiled = torch.compile(run, fullgraph=True)
    assert torch.equal(compiled(inputs), run(eager_inputs))
    for name in ("key_cache", "value_cache"):
        assert torch.equal(inputs[name], eager_inputs[name]), name


def torch_layer(t, position):
    """The layer in plain torch (float64 in, autograd through every step; the caches are read, not written)."""
    x = t["hidden_states"].reshape(1, HIDDEN)
    hd = HIDDEN // HEADS
    ln1 = F.layer_norm(x, (HIDDEN,), t["attn_ln_weight"], t["attn_ln_bias"])
    qkv = F.linear(ln1, t["qkv_weight"], t["qkv_bias"]).view(HEADS, 3 * hd)
    cos, sin = t["cos"].reshape(1, ROTARY), t["sin"].reshape(1, ROTARY)

    def rotary(v):
        r = v[:, :ROTARY]
        return torch.cat([r * cos + torch.cat([-r[:, ROTARY // 2:], r[:, :ROTARY // 2]], 1) * sin, v[:, ROTARY:]], 1)

    q, k, v = rotary(qkv[:, :hd]), rotary(qkv[:, hd:2 * hd]), qkv[:, 2 * hd:]
    keys = torch.cat([t["key_cache"][0, :, :position], k.unsqueeze(1)], 1)
    values = torch.cat([t["value_cache"][0, :, :position], v.unsqueeze(1)], 1)
    weights = torch.softmax((keys @ q.unsqueeze(2)).squeeze(2) * hd**-0.5, -1)
    attn = (weights.unsqueeze(1) @ values).reshape(1, HIDDEN)
    ln2 = F.layer_norm(x, (HIDDEN,), t["mlp_ln_weight"], t["mlp_ln_bias"])
    mlp = F.linear(F.gelu(F.linear(ln2, t["up_weight"], t["up_bias"])), t["down_weight"], t["down_bias"])
    return (x + F.linear(attn, t["dense_weight"], t["dense_bias"]) + mlp).reshape(t["hidden_states"].shape)


def test_gradients_equal_the_float64_layers():
    position = 4
    inputs = make_layer(position, torch.float64, "cpu")
    leaves = ("hidden_states", "qkv_weight", "up_weight", "mlp_ln_weight")
    reference_inputs = {k: v.clone() if torch.is_tensor(v) else v for k, v in inputs.items()}
    for name in leaves:
        inputs[name].requires_grad_(True)
        reference_inputs[name].requires_grad_(True)
    grad_out = torch.randn_like(inputs["hidden_states"])
    run(inputs).backward(grad_out)
    torch_layer(reference_inputs, position).backward(grad_out)
    for name in leaves:
        assert_matches(inputs[name].grad, reference_inputs[name].grad, torch.float64, what=f"d {name}")


def test_each_plan_reaches_its_block():
    inputs = make_layer(2, torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"clusterfusion.attention_block: .*QKV"):
        clusterfusion.gpt_neox_layer(**inputs, attention_plan="1:2:3:4:5")
    with pytest.raises(ValueError, match=r"clusterfusion.mlp_block_residual: .*UP"):
        clusterfusion.gpt_neox_layer(**inputs, block_plan="1:2:3:4:5")


def test_a_bad_mlp_argument_leaves_the_caches_untouched():
    inputs = make_layer(9, torch.float32, "cpu")
    before = {name: inputs[name].clone() for name in ("key_cache", "value_cache")}
    inputs["down_weight"] = inputs["down_weight"][:, :-8]
    with pytest.raises(ValueError, match="down_weight"):
        run(inputs)
    for name, cache in before.items():
        assert torch.equal(inputs[name], cache), f"{name} written before the error"


# The one-launch layer kernel (CUDA): Pythia's head sizes, as the kernel serves them.
FUSED_SHAPES = {  # hidden, heads, ffn, rotary_dims
    "70m": (512, 8, 2048, 16),  # head_dim 64
    "2.8b": (2560, 32, 10240, 20),  # 80
    "hd96": (768, 8, 3072, 24),  # 96
    "1.4b": (2048, 16, 8192, 32),  # 128
    "6.9b": (4096, 32, 16384, 32),  # 128
}
FUSED_MAX_LEN = 2100  # past 4 ranks x 256-position passes: ranks with several passes and with none


def fused_layer(name, position, dtype, **kwargs):
    inputs = make_layer(position, dtype, "cuda", shape=FUSED_SHAPES[name], max_len=FUSED_MAX_LEN, **kwargs)
    plan = clusterfusion.gpt_neox_layer_plan(inputs["qkv_weight"], inputs["up_weight"], FUSED_SHAPES[name][1])
    return inputs, plan


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(FUSED_SHAPES))
@pytest.mark.parametrize("position, biases", [(0, True), (255, False), (1100, True), (2099, True)])
def test_one_launch_matches_the_float64_layer(name, dtype, position, biases):
    inputs, _ = fused_layer(name, position, dtype, biases=biases)
    reference = expected(inputs)
    out = call_poisoned(lambda **kw: one_launch(kw), inputs)
    check(inputs, out, reference, position)


# The largest GPT-NeoX shapes: a 132-SM H100 runs them in clusters of 2, one head per cluster.
LARGE_SHAPES = {"12b": (5120, 40, 20480, 32), "20b": (6144, 64, 24576, 24)}  # hidden, heads, ffn, rotary_dims


@gpu
@pytest.mark.parametrize("name", list(LARGE_SHAPES))
def test_one_launch_serves_the_largest_shapes_where_the_card_holds_their_heads(name):
    position = 1100
    inputs = make_layer(position, torch.float16, "cuda", shape=LARGE_SHAPES[name], max_len=1200)
    try:
        plan = clusterfusion.gpt_neox_layer_plan(inputs["qkv_weight"], inputs["up_weight"], LARGE_SHAPES[name][1])
        assert plan["ctas"] // plan["cluster_size"] >= LARGE_SHAPES[name][1]
    except ValueError as error:  # a card that holds fewer clusters than heads: the op runs the blocks
        assert "heads on the" in str(error) or "no residency" in str(error), error
    reference = expected(inputs)
    check(inputs, call_poisoned(lambda **kw: one_launch(kw), inputs), reference, position)


@gpu
@pytest.mark.parametrize("kind, padding", [("bool", 0), ("bool", 700), ("additive", 3), ("float32", 0)])
def test_one_launch_masks(kind, padding):
    """Position 900: each rank of a head's cluster attends one pass of 256 positions;
    padding 700 masks every position of ranks 0 and 1 (they add nothing)."""
    position = 900
    inputs, _ = fused_layer("2.8b", position, torch.float16)
    mask = mask_row(kind, FUSED_MAX_LEN, position, torch.float16, "cuda", padding=padding)
    reference = expected(inputs, mask.cpu().double() if mask.dtype == torch.float16 else mask.cpu())
    check(inputs, one_launch(inputs, mask), reference, position)


@gpu
def test_one_launch_is_reproducible_and_replays_in_a_cuda_graph():
    """Bitwise equal results call after call and replay after replay, with the output
    and the appended cache rows poisoned before each replay."""
    position = 1300
    inputs, _ = fused_layer("6.9b", position, torch.bfloat16)
    first = one_launch(inputs)
    written = {k: inputs[k][:, :, position].clone() for k in ("key_cache", "value_cache")}
    assert torch.equal(one_launch(inputs), first), "a second call differs"
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        one_launch(inputs)  # warm-up on the capture stream
        with torch.cuda.graph(graph, stream=stream):
            out = one_launch(inputs)
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(20):
        out.fill_(float("nan"))
        for k in written:
            inputs[k][:, :, position] = float("nan")
        graph.replay()
        assert torch.equal(out, first), "a replay differs"
        for k, row in written.items():
            assert torch.equal(inputs[k][:, :, position], row), f"a replay's {k} row differs"


@gpu
@pytest.mark.parametrize("name", list(FUSED_SHAPES))
def test_the_kernels_plan_is_the_python_deal(name):
    hidden, heads, ffn, rotary = FUSED_SHAPES[name]
    weight = torch.empty(3 * hidden, hidden, dtype=torch.float16, device="cuda")
    up = torch.empty(ffn, hidden, dtype=torch.float16, device="cuda")
    plan = clusterfusion.gpt_neox_layer_plan(weight, up, heads)
    reference = deal(LayerShape(hidden, heads, ffn, rotary), plan["ctas"], plan["cluster_size"])
    assert plan["ctas"] <= torch.cuda.get_device_properties(0).multi_processor_count
    for cta, work in enumerate(plan["work"]):
        cluster, rank = divmod(cta, plan["cluster_size"])
        has_head = cluster in reference.head_cluster
        assert work["head"] == (reference.head_cluster.index(cluster) if has_head else -1), cta
        assert work["qkv"] == reference.qkv_reduction(rank), cta
        assert work["mlp"] == reference.mlp_slices[cta], cta
        if has_head:
            assert work["dense"] == reference.dense_rows(cluster, rank), cta
        assert work["sum"] == reference.sum_rows(cta), cta


@gpu
@pytest.mark.parametrize("layer_plan", ["auto", "blocks"])
def test_the_auto_and_blocks_plans_run_the_two_blocks_bit_for_bit(layer_plan):
    position = 600
    inputs, _ = fused_layer("70m", position, torch.float16)
    clones = {k: v.clone() if k.endswith("_cache") else v for k, v in inputs.items()}
    out = clusterfusion.gpt_neox_layer(**inputs, layer_plan=layer_plan)
    step = {k: v for k, v in clones.items() if not k.startswith(("mlp_", "up_", "down_"))}
    step["ln_weight"], step["ln_bias"] = step.pop("attn_ln_weight"), step.pop("attn_ln_bias")
    attn = clusterfusion.attention_block(**step)
    blocks = clusterfusion.mlp_block_residual(
        clones["hidden_states"], attn, clones["mlp_ln_weight"], clones["mlp_ln_bias"], clones["up_weight"],
        clones["up_bias"], clones["down_weight"], clones["down_bias"])
    assert torch.equal(out, blocks)


def test_a_bad_layer_plan_is_named():
    inputs = make_layer(3, torch.float32, "cpu")
    with pytest.raises(ValueError, match="gpt_neox_layer: argument 'layer_plan' must be \"auto\""):
        clusterfusion.gpt_neox_layer(**inputs, layer_plan="fused")


def test_the_tuning_layer_plan_reaches_the_op(monkeypatch):
    # The layer plan in force reaches the op when the call leaves it out: a bad one (which
    # clusterfusion.tuning itself refuses, so it is set directly) makes the op raise.
    inputs = make_layer(3, torch.float32, "cpu")
    monkeypatch.setattr(clusterfusion._tuning._state, "current", clusterfusion.Tuning(layer_plan="fused"))
    with pytest.raises(ValueError, match="gpt_neox_layer: argument 'layer_plan' must be \"auto\""):
        clusterfusion.gpt_neox_layer(**inputs)
    clusterfusion.gpt_neox_layer(**inputs, layer_plan="blocks")  # an explicit plan wins


@gpu
def test_tuning_one_launch_runs_the_layer_kernel():
    position = 600
    inputs, _ = fused_layer("70m", position, torch.float16)
    clones = {k: v.clone() if k.endswith("_cache") else v for k, v in inputs.items()}
    blocks = {k: v.clone() if k.endswith("_cache") else v for k, v in inputs.items()}
    with clusterfusion.tuning(layer_plan="one_launch"):
        tuned = clusterfusion.gpt_neox_layer(**inputs)
    assert torch.equal(tuned, one_launch(clones))
    # The kernel rounds once where the blocks round each branch: some outputs differ.
    assert not torch.equal(tuned, clusterfusion.gpt_neox_layer(**blocks, layer_plan="blocks"))


@pytest.mark.parametrize("layer_plan", ["auto", "one_launch"])
def test_on_the_cpu_every_layer_plan_is_the_two_blocks(layer_plan):
    inputs = make_layer(40, torch.float32, "cpu")
    clones = {k: v.clone() if k.endswith("_cache") else v for k, v in inputs.items()}
    assert torch.equal(run(inputs, layer_plan=layer_plan), run(clones, layer_plan="blocks"))
    for name in ("key_cache", "value_cache"):
        assert torch.equal(inputs[name], clones[name]), name


def test_the_plan_query_on_the_cpu_is_a_value_error():
    with pytest.raises(ValueError, match="launch plans exist for CUDA weights only"):
        clusterfusion.gpt_neox_layer_plan(torch.empty(3 * 64, 64), torch.empty(256, 64), 4)
