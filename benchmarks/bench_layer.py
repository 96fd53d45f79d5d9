"""Layer benchmark: one GPT-NeoX decode layer (parallel residual, one new token, static KV cache).

``x + attention(ln1(x)) + mlp(ln2(x))``, in one run on one GPU: the card's
streaming-read ceiling, then for each shape, dtype and context the time per layer
in context (32 layers with distinct weights and caches in one CUDA graph, each
layer's input written by the layer before it) of three arms:

* HuggingFace: the layer as HuggingFace 5.x computes it (the attention branch of
  ``bench_attention_block.py``, SDPA over the whole static cache with the mask row,
  and the MLP branch of ``bench_mlp_block.py``), eager kernels inside the graph;
* the same function under ``torch.compile`` (the strongest PyTorch baseline);
* the two blocks: ``attention_block`` then ``mlp_block_residual`` (seven launches);
* the layer: ``gpt_neox_layer(layer_plan="one_launch")``, one launch of the layer
  kernel where it serves the shape (the two blocks otherwise).

The floor is the layer's weights plus the keys and values in use at the read
ceiling; the table gives each arm's time over it.

    python benchmarks/bench_layer.py [--shapes 2.8b 6.9b] [--contexts 128 1024] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

import clusterfusion
from _timing import (add_common_arguments, add_context_arguments, graph_us, launch_tuning, parse_context_arguments,
                     print_markdown_table, print_row, save_results, start)
from bench_attention_block import huggingface_branch
from bench_attention_block import make_layers as attention_layers

# hidden, heads, rotary_dims, ffn
SHAPES = {"2.8b": (2560, 32, 20, 10240), "6.9b": (4096, 32, 32, 16384)}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
ARMS = ("huggingface", "compile", "blocks", "layer")


def huggingface_layer(hidden_states, attention, mlp):
    attn_output = huggingface_branch(hidden_states, **attention)
    normalized = F.layer_norm(hidden_states, (hidden_states.shape[-1],), mlp["ln_weight"], mlp["ln_bias"], 1e-5)
    up = F.gelu(F.linear(normalized, mlp["up_weight"], mlp["up_bias"]))
    return F.linear(up, mlp["down_weight"], mlp["down_bias"]) + attn_output + hidden_states


def blocks_layer(hidden_states, attention, mlp):
    a = attention
    attn_output = clusterfusion.attention_block(
        hidden_states, a["ln_weight"], a["ln_bias"], a["qkv_weight"], a["qkv_bias"], a["dense_weight"],
        a["dense_bias"], a["cos"], a["sin"], a["key_cache"], a["value_cache"], a["cache_position"],
        a["attention_mask"])
    return clusterfusion.mlp_block_residual(hidden_states, attn_output, mlp["ln_weight"], mlp["ln_bias"],
                                            mlp["up_weight"], mlp["up_bias"], mlp["down_weight"], mlp["down_bias"])


def one_launch_layer(hidden_states, attention, mlp):
    a = attention
    return clusterfusion.gpt_neox_layer(
        hidden_states, a["ln_weight"], a["ln_bias"], a["qkv_weight"], a["qkv_bias"], a["dense_weight"],
        a["dense_bias"], mlp["ln_weight"], mlp["ln_bias"], mlp["up_weight"], mlp["up_bias"], mlp["down_weight"],
        mlp["down_bias"], a["cos"], a["sin"], a["key_cache"], a["value_cache"], a["cache_position"],
        a["attention_mask"], layer_plan="one_launch")


def make_layers(shape, dtype, layers, max_len, position):
    """Each layer's attention inputs (bench_attention_block's, its input dropped: the chain
    feeds it) and MLP weights, all distinct per layer."""
    hidden, heads, rotary, ffn = SHAPES[shape]

    def rnd(*size, scale=1.0, shift=0.0):
        return (torch.randn(*size, device="cuda") * scale + shift).to(dtype)

    attention = attention_layers(hidden, heads, rotary, dtype, layers, max_len, position, in_context=False)
    for inputs in attention:
        del inputs["hidden_states"]
    return [
        dict(attention=inputs,
             mlp=dict(ln_weight=rnd(hidden, scale=0.1, shift=1.0), ln_bias=rnd(hidden, scale=0.1),
                      up_weight=rnd(ffn, hidden, scale=hidden**-0.5), up_bias=rnd(ffn, scale=0.1),
                      down_weight=rnd(hidden, ffn, scale=ffn**-0.5), down_bias=rnd(hidden, scale=0.1)))
        for inputs in attention
    ]


def chained(layer_fn, first_input):
    """The layers as the model runs them: each layer's input is the previous layer's output."""

    def run(layers):
        x = first_input
        for layer in layers:
            x = layer_fn(x, **layer)
        return x

    return run


def floor_bytes(shape, dtype, context):
    hidden, _, _, ffn = SHAPES[shape]
    weights = 4 * hidden * hidden + 2 * hidden * ffn
    return (weights + 2 * context * hidden) * (torch.finfo(dtype).bits // 8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, shapes=SHAPES, dtypes=DTYPES, arms=ARMS, m=None, reps=50, json="bench_layer.json",
                         plan_help='pin the attention block\'s two launch plans, "QKV;DENSE" (default: the planner\'s)')
    add_context_arguments(parser, [128, 1024])
    args = parse_context_arguments(parser, argv)
    if not args.context:
        parser.error("--no-context does not apply: the layer is timed in context only")
    started = start("bench_layer", args.reps)
    if started is None:
        return 1
    card, ceiling, probes = started

    arms = {"huggingface": huggingface_layer, "compile": torch.compile(huggingface_layer, dynamic=False),
            "blocks": blocks_layer, "layer": one_launch_layer}
    results = []
    with launch_tuning(args, "attention_plan"):
        for shape in args.shapes:
            hidden = SHAPES[shape][0]
            for dname in args.dtypes:
                dtype = DTYPES[dname]
                for context in args.contexts:
                    layers = make_layers(shape, dtype, args.layers, args.max_len, context - 1)
                    x = torch.randn(1, 1, hidden, device="cuda", dtype=dtype)
                    row = dict(shape=shape, dtype=dname, context=context, max_len=args.max_len,
                               floor_us=floor_bytes(shape, dtype, context) / (ceiling * 1e12) * 1e6)
                    for arm in args.arms:
                        # graph_us times fn over a list of layer kwargs: one call runs the whole chain.
                        us = graph_us(chained(arms[arm], x), [dict(layers=layers)], args.reps) / args.layers
                        row[f"{arm}_us"] = us
                        row[f"{arm}_x_floor"] = us / row["floor_us"]
                    for arm in ("blocks", "layer"):
                        if arm in args.arms and "compile" in args.arms:
                            row[f"{arm}_vs_compile"] = row["compile_us"] / row[f"{arm}_us"]
                    del layers
                    torch.cuda.empty_cache()
                    results.append(row)
                    print_row(row)

    save_results(args, card, ceiling, probes, results, max_len=args.max_len)
    print(f"\n{card}, read ceiling {ceiling:.2f} TB/s; us per layer in context (median of CUDA-graph replays of "
          f"{args.layers} chained layers, distinct weights and caches of {args.max_len} positions)\n")
    us, x = "{:.1f}", "{:.2f}x"
    print_markdown_table([
        ("shape", "shape", "{}"), ("dtype", "dtype", "{}"), ("context", "context", "{}"), ("floor", "floor_us", us),
        ("HF", "huggingface_us", us), ("compile", "compile_us", us), ("blocks", "blocks_us", us),
        ("layer", "layer_us", us), ("compile / floor", "compile_x_floor", x), ("blocks / floor", "blocks_x_floor", x),
        ("layer / floor", "layer_x_floor", x), ("layer vs compile", "layer_vs_compile", x),
    ], results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
