"""Kernel benchmark: clusterfusion's fused MLP block against PyTorch.

The block is GPT-NeoX's parallel-residual MLP branch:
``hidden + attn + down(gelu(up(layer_norm(hidden))))``. In one run on one GPU it
measures the card's streaming-read ceiling (the best of several probes), then
for each shape, dtype and token count (M) the time per layer of three arms:

* PyTorch: ``F.layer_norm``, ``F.linear``, ``F.gelu``, ``F.linear`` and the two
  adds, as HuggingFace runs them (eager kernels inside a CUDA graph),
* the same function under ``torch.compile`` (the strongest PyTorch baseline),
* ``clusterfusion.mlp_block_residual``,

each timed two ways inside CUDA graphs:

* back to back: 32 layers of the block alone, one after the other;
* in context: each layer's ``hidden_states`` is first written by an add (the
  previous layer's residual), as in the model; for torch.compile the add is
  compiled with the block. The add's own time, measured alone, is subtracted.

Every figure is the median over many repetitions of 32 layers with 32 distinct
weight sets (far more than the L2 cache), from random data, divided by 32.
Bandwidth counts both weights. Speedups are against the faster PyTorch arm.

    python benchmarks/bench_mlp_block.py [--shapes 2.8b 6.9b] [--m 1 4 16] [--json FILE]
    python benchmarks/bench_mlp_block.py --arms clusterfusion --plan "80:1;184:8" --no-pdl   # tuning
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

import clusterfusion
from _timing import (add_common_arguments, after_residual, graph_us, launch_tuning, print_markdown_table, print_row,
                     residual_only, save_results, start)

SHAPES = {"2.8b": (2560, 10240), "6.9b": (4096, 16384)}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
ARMS = ("pytorch", "compile", "clusterfusion")
WEIGHTS = ("ln_weight", "ln_bias", "up_weight", "up_bias", "down_weight", "down_bias")


def pytorch_block(hidden_states, attn_output, ln_weight, ln_bias, up_weight, up_bias, down_weight, down_bias):
    normalized = F.layer_norm(hidden_states, (hidden_states.shape[-1],), ln_weight, ln_bias, 1e-5)
    mlp_output = F.linear(F.gelu(F.linear(normalized, up_weight, up_bias)), down_weight, down_bias)
    return mlp_output + attn_output + hidden_states


def clusterfusion_block(hidden_states, attn_output, ln_weight, ln_bias, up_weight, up_bias, down_weight, down_bias):
    return clusterfusion.mlp_block_residual(
        hidden_states, attn_output, ln_weight, ln_bias, up_weight, up_bias, down_weight, down_bias
    )


def make_weights(hidden, ffn, dtype, layers):
    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, device="cuda") * scale + shift).to(dtype)

    return [
        dict(ln_weight=rnd(hidden, scale=0.1, shift=1.0), ln_bias=rnd(hidden, scale=0.1),
             up_weight=rnd(ffn, hidden, scale=hidden**-0.5), up_bias=rnd(ffn, scale=0.1),
             down_weight=rnd(hidden, ffn, scale=ffn**-0.5), down_bias=rnd(hidden, scale=0.1))
        for _ in range(layers)
    ]


def make_layers(weights, m, dtype, in_context):
    hidden = weights[0]["ln_weight"].shape[0]

    def act():
        return torch.randn(m, hidden, device="cuda", dtype=dtype)

    inputs = (lambda: dict(previous=act(), residual=act())) if in_context else (lambda: dict(hidden_states=act()))
    return [dict(**inputs(), attn_output=act(), **w) for w in weights]


def measure_row(args, weights, m, dtype, compiled):
    row = {}
    layers = make_layers(weights, m, dtype, in_context=False)
    fns = {"pytorch": pytorch_block, "compile": compiled["block"], "clusterfusion": clusterfusion_block}
    for arm in args.arms:
        row[f"{arm}_graph_us"] = graph_us(fns[arm], layers, args.reps)
    if args.context:
        context_layers = make_layers(weights, m, dtype, in_context=True)
        add = graph_us(residual_only, context_layers, args.reps)
        row["residual_add_us"] = add
        in_context = {"pytorch": after_residual(pytorch_block), "compile": compiled["in_context"],
                      "clusterfusion": after_residual(clusterfusion_block)}
        for arm in args.arms:
            row[f"{arm}_context_us"] = graph_us(in_context[arm], context_layers, args.reps) - add
    return row


def add_ratios(row, ceiling, weight_bytes):
    row["floor_us"] = weight_bytes / (ceiling * 1e12) * 1e6
    for mode in ("graph", "context"):
        key = f"clusterfusion_{mode}_us"
        if key not in row:
            continue
        row[f"clusterfusion_{mode}_pct_ceiling"] = 100 * row["floor_us"] / row[key]
        baselines = [row[k] for k in (f"pytorch_{mode}_us", f"compile_{mode}_us") if k in row]
        if baselines:
            row[f"speedup_{mode}"] = min(baselines) / row[key]


def print_table(results, card, ceiling):
    print(f"\n{card}, read ceiling {ceiling:.2f} TB/s; us per layer (median, 32 layers, distinct weights, CUDA graphs)")
    print("Back to back: the block alone, layer after layer. In context: after the add that writes its input, "
          "the add's time subtracted. % ceiling: both weights at the read ceiling against the time.")
    print("Speedup: against the faster of PyTorch and torch.compile in the same mode.\n")
    us, pct, x = "{:.1f}", "{:.1f}%", "{:.2f}x"
    print_markdown_table([
        ("shape", "shape", "{}"), ("dtype", "dtype", "{}"), ("M", "m", "{}"), ("floor", "floor_us", us),
        ("PT", "pytorch_graph_us", us), ("compile", "compile_graph_us", us), ("CF", "clusterfusion_graph_us", us),
        ("% ceiling", "clusterfusion_graph_pct_ceiling", pct), ("speedup", "speedup_graph", x),
        ("PT in context", "pytorch_context_us", us), ("compile in context", "compile_context_us", us),
        ("CF in context", "clusterfusion_context_us", us),
        ("% ceiling in context", "clusterfusion_context_pct_ceiling", pct), ("speedup in context", "speedup_context", x),
    ], results)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, shapes=SHAPES, dtypes=DTYPES, arms=ARMS, m=[1, 4, 16], reps=50, json="bench_mlp_block.json",
                         plan_help='pin clusterfusion\'s two launch plans, "UP;DOWN" (default: the planner\'s)')
    args = parser.parse_args(argv)
    started = start("bench_mlp_block", args.reps)
    if started is None:
        return 1
    card, ceiling, probes = started

    compiled = {"block": torch.compile(pytorch_block, dynamic=False),
                "in_context": torch.compile(after_residual(pytorch_block), dynamic=False)}
    results = []
    with launch_tuning(args, "block_plan"):
        for shape in args.shapes:
            hidden, ffn = SHAPES[shape]
            for dname in args.dtypes:
                dtype = DTYPES[dname]
                weights = make_weights(hidden, ffn, dtype, args.layers)
                weight_bytes = 2 * hidden * ffn * weights[0]["up_weight"].element_size()
                for m in args.m:
                    row = dict(shape=shape, hidden=hidden, ffn=ffn, dtype=dname, m=m)
                    if "clusterfusion" in args.arms:
                        plans = clusterfusion.mlp_block_residual_plan(weights[0]["up_weight"],
                                                                      weights[0]["down_weight"], m)
                        row["plan"] = {"up": plans.up._asdict(), "down": plans.down._asdict()}
                    row.update(measure_row(args, weights, m, dtype, compiled))
                    add_ratios(row, ceiling, weight_bytes)
                    results.append(row)
                    print_row(row, skip=("plan",))
                del weights
                torch.cuda.empty_cache()

    save_results(args, card, ceiling, probes, results)
    print_table(results, card, ceiling)
    return 0


if __name__ == "__main__":
    sys.exit(main())
