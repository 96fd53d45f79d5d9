"""The one-launch layer's plan (clusterfusion._layer_plan): every weight row and column
dealt exactly once, the weight bytes balanced across CTAs, and the layer computed by the
plan on the CPU equal to the float64 layer for every way of dealing it."""

from __future__ import annotations

import pytest
import torch

import clusterfusion
from clusterfusion._layer_plan import MLP_ROW_STEP, LayerShape, deal, run_layer_plan, split
from conftest import assert_matches
from test_attention_block import make_step, mask_row

# hidden, heads, ffn, rotary_dims of the Pythia family and GPT-NeoX-20B
PYTHIA = {
    "70m": LayerShape(512, 8, 2048, 16), "410m": LayerShape(1024, 16, 4096, 16), "1b": LayerShape(2048, 8, 8192, 64),
    "1.4b": LayerShape(2048, 16, 8192, 32), "2.8b": LayerShape(2560, 32, 10240, 20),
    "6.9b": LayerShape(4096, 32, 16384, 32), "12b": LayerShape(5120, 40, 20480, 32),
    "20b": LayerShape(6144, 64, 24576, 24),
}


def test_split_covers_in_whole_steps():
    for n, parts, step in [(2560, 4, 64), (100, 3, 8), (8, 5, 8), (0, 2, 8), (4096, 132, 8)]:
        ranges = split(n, parts, step)
        assert len(ranges) == parts and ranges[0].start == 0 and ranges[-1].stop == n
        assert all(r.stop == q.start for r, q in zip(ranges, ranges[1:]))
        assert all(r.start % step == 0 for r in ranges)
        assert max(map(len, ranges)) - min(map(len, ranges)) <= step


@pytest.mark.parametrize("model", list(PYTHIA))
@pytest.mark.parametrize("ctas, cluster_size", [(132, 4), (114, 2), (170, 2), (78, 1), (16, 8)])
def test_every_weight_element_is_dealt_once(model, ctas, cluster_size):
    shape = PYTHIA[model]
    plan = deal(shape, ctas, cluster_size)
    assert len(plan.mlp_slices) == ctas
    assert plan.mlp_slices[0].start == 0 and plan.mlp_slices[-1].stop == shape.ffn
    assert all(r.stop == q.start for r, q in zip(plan.mlp_slices, plan.mlp_slices[1:])), "slices not contiguous"
    assert all(0 <= c < plan.clusters for c in plan.head_cluster) and len(plan.head_cluster) == shape.heads
    assert [i for rank in range(cluster_size) for i in plan.qkv_reduction(rank)] == list(range(shape.hidden))
    for cluster in range(plan.clusters):
        assert [i for rank in range(cluster_size) for i in plan.dense_rows(cluster, rank)] == list(range(shape.hidden))
    assert [i for cta in range(ctas) for i in plan.sum_rows(cta)] == list(range(shape.hidden))
    assert sum(plan.weight_elements_per_cta()) == shape.weight_elements()


@pytest.mark.parametrize("model, ctas, cluster_size", [
    ("2.8b", 132, 4), ("6.9b", 132, 4), ("12b", 132, 4), ("20b", 132, 4), ("1.4b", 132, 4), ("1b", 128, 8),
    ("2.8b", 114, 2), ("6.9b", 170, 2), ("2.8b", 78, 2),
])
def test_weight_bytes_are_balanced(model, ctas, cluster_size):
    """Every CTA streams its fair share to within one step of MLP rows (MLP_ROW_STEP
    up rows and down columns), the granularity of the slices, and 1%."""
    shape = PYTHIA[model]
    per_cta = deal(shape, ctas, cluster_size).weight_elements_per_cta()
    mean = sum(per_cta) / ctas
    step = 2 * shape.hidden * MLP_ROW_STEP
    assert max(per_cta) <= mean + step + 0.01 * mean and min(per_cta) >= mean - step - 0.01 * mean, (
        f"per CTA {max(per_cta) / mean:.3f}x to {min(per_cta) / mean:.3f}x of the mean; one step is "
        f"{step / mean:.3f}x")


def test_heads_too_large_for_their_cluster_unbalance_it():
    """The limit the cluster size must be chosen for: Pythia-1b's heads of 256 in clusters of 4."""
    per_cta = deal(PYTHIA["1b"], 132, 4).weight_elements_per_cta()
    assert max(per_cta) / (sum(per_cta) / 132) > 1.3


def test_bad_settings_raise():
    shape = PYTHIA["2.8b"]
    with pytest.raises(ValueError, match="multiple of cluster_size"):
        deal(shape, 10, 4)
    with pytest.raises(ValueError, match="ctas must be a positive int"):
        deal(shape, 0, 1)


def reference_layer(step, mlp, mask):
    """The layer in float64 with the ops' CPU backends (each checked against HuggingFace in
    its own tests; HuggingFace's attention takes its softmax in float32): the output and
    the caches after it."""
    d = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in {**step, **mlp}.items()}
    d["key_cache"], d["value_cache"] = d["key_cache"].clone(), d["value_cache"].clone()
    attn = clusterfusion.attention_block(
        d["hidden_states"], d["ln_weight"], d["ln_bias"], d["qkv_weight"], d["qkv_bias"], d["dense_weight"],
        d["dense_bias"], d["cos"], d["sin"], d["key_cache"], d["value_cache"], d["cache_position"],
        None if mask is None else mask)
    out = clusterfusion.mlp_block_residual(d["hidden_states"], attn, d["mlp_ln_weight"], d["mlp_ln_bias"],
                                           d["up_weight"], d["up_bias"], d["down_weight"], d["down_bias"])
    return out, d["key_cache"], d["value_cache"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("ctas, cluster_size", [(1, 1), (4, 2), (6, 3), (8, 4), (12, 4)])
@pytest.mark.parametrize("position, padding", [(0, None), (70, None), (199, None), (150, 3), (150, 70)])
def test_the_plan_computes_the_layer(dtype, ctas, cluster_size, position, padding):
    """padding: masked leading positions (None: no mask); 70 masks every position some ranks attend over."""
    hidden, heads, ffn, rotary = 128, 4, 512, 8
    step = make_step(hidden, heads, rotary, 200, position, dtype, "cpu")
    mask = None if padding is None else mask_row("bool", 200, position, dtype, "cpu", padding=padding)
    g = torch.Generator().manual_seed(int(torch.randint(2**31, ())))
    rnd = lambda *s, scale=1.0, shift=0.0: (torch.randn(*s, generator=g) * scale + shift).to(dtype)  # noqa: E731
    mlp = dict(mlp_ln_weight=rnd(hidden, scale=0.2, shift=1.0), mlp_ln_bias=rnd(hidden, scale=0.2),
               up_weight=rnd(ffn, hidden, scale=hidden**-0.5), up_bias=rnd(ffn, scale=0.2),
               down_weight=rnd(hidden, ffn, scale=ffn**-0.5), down_bias=rnd(hidden, scale=0.2))
    expected, keys, values = reference_layer(step, mlp, mask)

    plan = deal(LayerShape(hidden, heads, ffn, rotary), ctas, cluster_size)
    out = run_layer_plan(
        plan, step["hidden_states"], step["ln_weight"], step["ln_bias"], step["qkv_weight"], step["qkv_bias"],
        step["dense_weight"], step["dense_bias"], mlp["mlp_ln_weight"], mlp["mlp_ln_bias"], mlp["up_weight"],
        mlp["up_bias"], mlp["down_weight"], mlp["down_bias"], step["cos"], step["sin"], step["key_cache"],
        step["value_cache"], position, attention_mask=mask)

    assert out.dtype == dtype and out.shape == step["hidden_states"].shape
    assert_matches(out, expected, dtype, what="layer output")
    for name, ref in (("key_cache", keys), ("value_cache", values)):
        assert_matches(step[name][:, :, position], ref[:, :, position], dtype, what=f"{name} at {position}")
        others = torch.ones(200, dtype=torch.bool)
        others[position] = False
        assert torch.equal(step[name][:, :, others].double(), ref[:, :, others]), f"{name} changed elsewhere"
