"""Kernel benchmark: clusterfusion's fused attention block against HuggingFace's attention branch.

The branch is GPT-NeoX's, for one new token with a static KV cache: LayerNorm,
``query_key_value``, rotary embedding, the cache append, attention, ``dense``.
In one run on one GPU it measures the card's streaming-read ceiling, then for
each shape, dtype and context length the time per layer of three arms:

* HuggingFace: the branch as HuggingFace 5.x runs it with a ``StaticCache`` and
  SDPA (``F.layer_norm``, ``F.linear``, ``apply_rotary_pos_emb``, ``index_copy_``
  into the caches, ``F.scaled_dot_product_attention`` over the whole cache with
  the boolean mask row, ``F.linear``), eager kernels inside a CUDA graph;
* the same function under ``torch.compile`` (the strongest PyTorch baseline);
* ``clusterfusion.attention_block`` (attends over positions 0..position only).

each timed back to back (32 layers of the branch alone) and in context (each
layer's input first written by an add, the add's own time subtracted), inside
CUDA graphs, the median over many replays of 32 layers with distinct weights and
caches, divided by 32. The floor is both weights plus the keys and values in use
at the read ceiling. The caches hold ``--max-len`` positions (default 2048, as a
``StaticCache`` for 2048 tokens would); the new token's position is context - 1.

    python benchmarks/bench_attention_block.py [--shapes 2.8b 6.9b] [--contexts 128 1024 2048] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

import clusterfusion
from _timing import (add_common_arguments, add_context_arguments, after_residual, graph_us, launch_tuning,
                     parse_context_arguments, print_markdown_table, print_row, residual_only, save_results, start)

# hidden, heads, rotary_dims
SHAPES = {"2.8b": (2560, 32, 20), "6.9b": (4096, 32, 32)}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
ARMS = ("huggingface", "compile", "clusterfusion")


def huggingface_branch(hidden_states, ln_weight, ln_bias, qkv_weight, qkv_bias, dense_weight, dense_bias, cos, sin,
                       key_cache, value_cache, cache_position, attention_mask):
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

    heads, head_dim = key_cache.shape[1], key_cache.shape[3]
    x = F.layer_norm(hidden_states, (hidden_states.shape[-1],), ln_weight, ln_bias, 1e-5)
    qkv = F.linear(x, qkv_weight, qkv_bias).view(1, 1, heads, 3 * head_dim).transpose(1, 2)
    query, key, value = qkv.chunk(3, dim=-1)
    query, key = apply_rotary_pos_emb(query, key, cos, sin)
    key_cache.index_copy_(2, cache_position, key)
    value_cache.index_copy_(2, cache_position, value)
    attn = F.scaled_dot_product_attention(query, key_cache, value_cache, attn_mask=attention_mask,
                                          scale=head_dim**-0.5)
    return F.linear(attn.transpose(1, 2).reshape(1, 1, -1), dense_weight, dense_bias)


def clusterfusion_branch(hidden_states, ln_weight, ln_bias, qkv_weight, qkv_bias, dense_weight, dense_bias, cos, sin,
                         key_cache, value_cache, cache_position, attention_mask):
    return clusterfusion.attention_block(hidden_states, ln_weight, ln_bias, qkv_weight, qkv_bias, dense_weight,
                                         dense_bias, cos, sin, key_cache, value_cache, cache_position, attention_mask)


def make_layers(hidden, heads, rotary, dtype, layers, max_len, position, in_context):
    head_dim = hidden // heads

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, device="cuda") * scale + shift).to(dtype)

    def act():
        return rnd(1, 1, hidden)

    angles = position / 10000.0 ** (torch.arange(0, rotary, 2, device="cuda", dtype=torch.float64) / rotary)
    angles = torch.cat([angles, angles]).reshape(1, 1, rotary)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    mask = (torch.arange(max_len, device="cuda") <= position).reshape(1, 1, 1, max_len)
    cache_position = torch.tensor([position], device="cuda")
    inputs = (lambda: dict(previous=act(), residual=act())) if in_context else (lambda: dict(hidden_states=act()))
    return [
        dict(**inputs(), ln_weight=rnd(hidden, scale=0.1, shift=1.0), ln_bias=rnd(hidden, scale=0.1),
             qkv_weight=rnd(3 * hidden, hidden, scale=hidden**-0.5), qkv_bias=rnd(3 * hidden, scale=0.1),
             dense_weight=rnd(hidden, hidden, scale=hidden**-0.5), dense_bias=rnd(hidden, scale=0.1),
             cos=cos, sin=sin, key_cache=rnd(1, heads, max_len, head_dim), value_cache=rnd(1, heads, max_len, head_dim),
             cache_position=cache_position, attention_mask=mask)
        for _ in range(layers)
    ]


def measure_row(args, shape, dtype, context, compiled):
    hidden, heads, rotary = SHAPES[shape]
    row = {}
    fns = {"huggingface": huggingface_branch, "compile": compiled["branch"], "clusterfusion": clusterfusion_branch}
    layers = make_layers(hidden, heads, rotary, dtype, args.layers, args.max_len, context - 1, in_context=False)
    for arm in args.arms:
        row[f"{arm}_graph_us"] = graph_us(fns[arm], layers, args.reps)
    del layers
    if args.context:
        layers = make_layers(hidden, heads, rotary, dtype, args.layers, args.max_len, context - 1, in_context=True)
        add = graph_us(residual_only, layers, args.reps)
        row["residual_add_us"] = add
        in_context = {"huggingface": after_residual(huggingface_branch), "compile": compiled["in_context"],
                      "clusterfusion": after_residual(clusterfusion_branch)}
        for arm in args.arms:
            row[f"{arm}_context_us"] = graph_us(in_context[arm], layers, args.reps) - add
        del layers
    torch.cuda.empty_cache()
    return row


def add_ratios(row, ceiling, floor_bytes):
    row["floor_us"] = floor_bytes / (ceiling * 1e12) * 1e6
    for mode in ("graph", "context"):
        key = f"clusterfusion_{mode}_us"
        if key not in row:
            continue
        row[f"clusterfusion_{mode}_x_floor"] = row[key] / row["floor_us"]
        for arm in ("huggingface", "compile"):
            if f"{arm}_{mode}_us" in row:
                row[f"speedup_vs_{arm}_{mode}"] = row[f"{arm}_{mode}_us"] / row[key]


def print_table(results, card, ceiling, max_len):
    print(f"\n{card}, read ceiling {ceiling:.2f} TB/s; us per layer (median, 32 layers, distinct weights and caches, "
          f"CUDA graphs); caches of {max_len} positions")
    print("Floor: both weights and the keys and values in use at the read ceiling. HF: HuggingFace's branch "
          "(SDPA over the whole static cache); compile: the same under torch.compile.\n")
    us, x = "{:.1f}", "{:.2f}x"
    print_markdown_table([
        ("shape", "shape", "{}"), ("dtype", "dtype", "{}"), ("context", "context", "{}"), ("floor", "floor_us", us),
        ("HF", "huggingface_graph_us", us), ("compile", "compile_graph_us", us), ("CF", "clusterfusion_graph_us", us),
        ("CF / floor", "clusterfusion_graph_x_floor", x), ("vs compile", "speedup_vs_compile_graph", x),
        ("HF in context", "huggingface_context_us", us), ("compile in context", "compile_context_us", us),
        ("CF in context", "clusterfusion_context_us", us),
        ("CF / floor in context", "clusterfusion_context_x_floor", x),
        ("vs compile in context", "speedup_vs_compile_context", x),
    ], results)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, shapes=SHAPES, dtypes=DTYPES, arms=ARMS, m=None, reps=50,
                         json="bench_attention_block.json",
                         plan_help='pin clusterfusion\'s two launch plans, "QKV;DENSE" (default: the planner\'s)')
    add_context_arguments(parser, [128, 1024, 2048])
    args = parse_context_arguments(parser, argv)
    started = start("bench_attention_block", args.reps)
    if started is None:
        return 1
    card, ceiling, probes = started

    compiled = {"branch": torch.compile(huggingface_branch, dynamic=False),
                "in_context": torch.compile(after_residual(huggingface_branch), dynamic=False)}
    results = []
    with launch_tuning(args, "attention_plan"):
        for shape in args.shapes:
            hidden, heads, rotary = SHAPES[shape]
            for dname in args.dtypes:
                dtype = DTYPES[dname]
                for context in args.contexts:
                    row = dict(shape=shape, hidden=hidden, heads=heads, dtype=dname, context=context,
                               max_len=args.max_len)
                    row.update(measure_row(args, shape, dtype, context, compiled))
                    element = torch.finfo(dtype).bits // 8
                    add_ratios(row, ceiling, (4 * hidden * hidden + 2 * context * hidden) * element)
                    results.append(row)
                    print_row(row)

    save_results(args, card, ceiling, probes, results, max_len=args.max_len)
    print_table(results, card, ceiling, args.max_len)
    return 0


if __name__ == "__main__":
    sys.exit(main())
