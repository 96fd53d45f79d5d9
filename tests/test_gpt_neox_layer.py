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
from conftest import assert_matches, gpu
from test_attention_block import make_step, mask_row
from test_layer_plan import reference_layer

HIDDEN, HEADS, FFN, ROTARY, MAX_LEN = 128, 4, 512, 8, 160


def make_layer(position, dtype, device, *, biases=True):
    """One decode step's layer inputs: the attention block's (its LayerNorm renamed) and the MLP block's."""
    step = make_step(HIDDEN, HEADS, ROTARY, MAX_LEN, position, dtype, device, biases=biases)
    g = torch.Generator(device=device).manual_seed(int(torch.randint(2**31, ())))

    def rnd(*size, scale=1.0, shift=0.0):
        return (torch.randn(*size, generator=g, device=device) * scale + shift).to(dtype)

    step["attn_ln_weight"], step["attn_ln_bias"] = step.pop("ln_weight"), step.pop("ln_bias")
    return dict(
        **step,
        mlp_ln_weight=rnd(HIDDEN, scale=0.2, shift=1.0), mlp_ln_bias=rnd(HIDDEN, scale=0.2) if biases else None,
        up_weight=rnd(FFN, HIDDEN, scale=HIDDEN**-0.5), up_bias=rnd(FFN, scale=0.2) if biases else None,
        down_weight=rnd(HIDDEN, FFN, scale=FFN**-0.5), down_bias=rnd(HIDDEN, scale=0.2) if biases else None,
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
        others = torch.ones(MAX_LEN, dtype=torch.bool)
        others[position] = False
        assert torch.equal(cache[:, :, others].double(), ref[:, :, others]), f"{name} changed outside the position"


def run(inputs, mask=None):
    return clusterfusion.gpt_neox_layer(**inputs, attention_mask=mask)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("position, masked, biases", [(0, False, True), (63, False, False), (159, True, True)])
def test_cpu_matches_the_float64_layer(dtype, position, masked, biases):
    inputs = make_layer(position, dtype, "cpu", biases=biases)
    mask = mask_row("bool", MAX_LEN, position, dtype, "cpu", padding=2) if masked else None
    reference = expected(inputs, mask)
    check(inputs, run(inputs, mask), reference, position)


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("position", [0, 100, 159])
def test_cuda_matches_the_float64_layer(dtype, position):
    inputs = make_layer(position, dtype, "cuda")
    reference = expected(inputs)
    check(inputs, run(inputs), reference, position)


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
