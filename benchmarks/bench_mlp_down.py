"""Kernel benchmark: clusterfusion's fused MLP-down + residual against PyTorch.

In one run on one GPU it measures the card's streaming-read ceiling, then for
each shape, dtype and token count (M) the time per layer of three arms:

* PyTorch: ``F.linear(x, W, b) + attn + hidden`` (what HuggingFace runs),
* the same function under ``torch.compile`` (the strongest PyTorch baseline),
* ``clusterfusion.mlp_down_residual``,

each timed two ways inside CUDA graphs:

* back to back: 32 layers of the op alone, one after the other;
* in context: each layer's ``F.gelu`` produces the op's input, as in the model
  (for torch.compile the GELU is compiled with the layer). The GELU's own time,
  measured alone in the same way, is subtracted.

PyTorch and clusterfusion are also timed eagerly, with the host cost of one
call. Every figure is the median over many repetitions of 32 layers with 32
distinct weight sets (far more than the L2 cache), from random data, divided by
32. Speedups are against the faster PyTorch arm of the same mode. Prints a
table and writes JSON.

    python benchmarks/bench_mlp_down.py [--shapes 2.8b 6.9b] [--m 1 2 4 8 16] [--json FILE]
    python benchmarks/bench_mlp_down.py --arms clusterfusion --plan 184:8:8 --no-pdl   # tuning
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

import clusterfusion
from _timing import add_common_arguments, eager_us, graph_us, host_us, launch_tuning, print_row, save_results, start

SHAPES = {"2.8b": (2560, 10240), "6.9b": (4096, 16384)}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def pytorch_layer(hidden_states, attn_output, mlp_intermediate, weight, bias):
    return F.linear(mlp_intermediate, weight, bias) + attn_output + hidden_states


def clusterfusion_layer(hidden_states, attn_output, mlp_intermediate, weight, bias):
    return clusterfusion.mlp_down_residual(hidden_states, attn_output, mlp_intermediate, weight, bias)


def after_gelu(layer_fn):
    """The layer as the model runs it: its input is the GELU of the up projection's output."""

    def layer(hidden_states, attn_output, up_output, weight, bias):
        return layer_fn(hidden_states, attn_output, F.gelu(up_output), weight, bias)

    return layer


def gelu_only(hidden_states, attn_output, up_output, weight, bias):
    return F.gelu(up_output)


def make_weights(hidden, ffn, dtype, layers):
    scale = ffn**-0.5
    return [
        (torch.randn(hidden, ffn, device="cuda", dtype=dtype) * scale, torch.randn(hidden, device="cuda", dtype=dtype))
        for _ in range(layers)
    ]


def make_layers(weights, m, dtype, input_name="mlp_intermediate"):
    hidden, ffn = weights[0][0].shape
    return [
        {
            "hidden_states": torch.randn(m, hidden, device="cuda", dtype=dtype),
            "attn_output": torch.randn(m, hidden, device="cuda", dtype=dtype),
            input_name: torch.randn(m, ffn, device="cuda", dtype=dtype),
            "weight": w,
            "bias": b,
        }
        for w, b in weights
    ]


def layer_bytes(hidden, ffn, m, dtype):
    elem = torch.empty((), dtype=dtype).element_size()
    return elem * (hidden * ffn + hidden + m * ffn + 3 * m * hidden)


ARMS = ("pytorch", "compile", "clusterfusion")


def measure_row(args, layers, context_layers, compiled, compiled_in_context):
    """Every requested arm's times for one shape, dtype and M (us per layer)."""
    row = {}
    if "pytorch" in args.arms:
        row["pytorch_eager_us"] = eager_us(pytorch_layer, layers, args.reps)
        row["pytorch_graph_us"] = graph_us(pytorch_layer, layers, args.reps)
        row["pytorch_host_us"] = host_us(pytorch_layer, layers[0])
    if "compile" in args.arms:
        row["compile_graph_us"] = graph_us(compiled, layers, args.reps)
    if "clusterfusion" in args.arms:
        row["cf_eager_us"] = eager_us(clusterfusion_layer, layers, args.reps)
        row["cf_graph_us"] = graph_us(clusterfusion_layer, layers, args.reps)
        row["cf_host_us"] = host_us(clusterfusion_layer, layers[0])
    if args.context:
        gelu = graph_us(gelu_only, context_layers, args.reps)
        row["gelu_graph_us"] = gelu
        in_context = {
            "pytorch": lambda: after_gelu(pytorch_layer),
            "compile": lambda: compiled_in_context,
            "clusterfusion": lambda: after_gelu(clusterfusion_layer),
        }
        for arm in args.arms:
            row[f"{'cf' if arm == 'clusterfusion' else arm}_context_us"] = (
                graph_us(in_context[arm](), context_layers, args.reps) - gelu
            )
    return row


def add_ratios(row, ceiling, bytes_per_layer):
    """Bandwidth and speedups against the faster PyTorch arm of each mode."""
    if "cf_graph_us" in row:
        row["cf_tbs"] = bytes_per_layer / (row["cf_graph_us"] * 1e-6) / 1e12
        row["cf_pct_ceiling"] = 100 * row["cf_tbs"] / ceiling
    for mode in ("graph", "context"):
        baselines = [row[k] for k in (f"pytorch_{mode}_us", f"compile_{mode}_us") if k in row]
        if baselines and f"cf_{mode}_us" in row:
            row[f"best_pytorch_{mode}_us"] = min(baselines)
            row[f"speedup_{mode}"] = min(baselines) / row[f"cf_{mode}_us"]
    if "pytorch_host_us" in row and "cf_host_us" in row:
        row["host_ratio"] = row["cf_host_us"] / row["pytorch_host_us"]


def print_table(results, card, ceiling):
    print(f"\n{card}, read ceiling {ceiling:.2f} TB/s; us per layer (median, 32 layers, distinct weights, CUDA graphs)")
    print("Back to back: the op alone, layer after layer. In context: after the GELU that produces its input, GELU time subtracted.")
    print("Speedup: against the faster of PyTorch and torch.compile in the same mode.\n")
    header = (
        "| shape | dtype | M | PT | compile | CF | % ceiling | speedup | PT in context | compile in context "
        "| CF in context | speedup in context | host PT / CF |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))

    def cell(r, key, fmt="{:.1f}"):
        return fmt.format(r[key]) if key in r else "-"

    for r in results:
        print(
            f"| {r['shape']} | {r['dtype']} | {r['m']} | {cell(r, 'pytorch_graph_us')} | {cell(r, 'compile_graph_us')} | "
            f"{cell(r, 'cf_graph_us')} | {cell(r, 'cf_pct_ceiling', '{:.1f}%')} | {cell(r, 'speedup_graph', '{:.2f}x')} | "
            f"{cell(r, 'pytorch_context_us')} | {cell(r, 'compile_context_us')} | {cell(r, 'cf_context_us')} | "
            f"{cell(r, 'speedup_context', '{:.2f}x')} | {cell(r, 'pytorch_host_us')} / {cell(r, 'cf_host_us')} |"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, shapes=SHAPES, dtypes=DTYPES, arms=ARMS, m=[1, 2, 4, 8, 16], reps=100,
                         json="bench_mlp_down.json",
                         plan_help="pin clusterfusion's launch plan, BLOCK_N:CLUSTER[:STAGES] (default: the planner's)")
    args = parser.parse_args(argv)
    started = start("bench_mlp_down", args.reps)
    if started is None:
        return 1
    card, ceiling, probes = started

    compiled = torch.compile(pytorch_layer, dynamic=False) if "compile" in args.arms else None
    compiled_in_context = torch.compile(after_gelu(pytorch_layer), dynamic=False) if "compile" in args.arms else None
    results = []
    with launch_tuning(args, "plan"):
        for shape in args.shapes:
            hidden, ffn = SHAPES[shape]
            for dname in args.dtypes:
                dtype = DTYPES[dname]
                weights = make_weights(hidden, ffn, dtype, args.layers)
                for m in args.m:
                    layers = make_layers(weights, m, dtype)
                    context_layers = make_layers(weights, m, dtype, input_name="up_output") if args.context else None
                    row = dict(shape=shape, hidden=hidden, ffn=ffn, dtype=dname, m=m)
                    row["floor_us"] = hidden * ffn * layers[0]["weight"].element_size() / (ceiling * 1e12) * 1e6
                    if "clusterfusion" in args.arms and hasattr(clusterfusion, "mlp_down_residual_plan"):
                        row["cf_plan"] = clusterfusion.mlp_down_residual_plan(weights[0][0], m)._asdict()
                    row.update(measure_row(args, layers, context_layers, compiled, compiled_in_context))
                    add_ratios(row, ceiling, layer_bytes(hidden, ffn, m, dtype))
                    results.append(row)
                    print_row(row)
                    del layers, context_layers
                del weights
                torch.cuda.empty_cache()

    save_results(args, card, ceiling, probes, results)
    print_table(results, card, ceiling)
    return 0


if __name__ == "__main__":
    sys.exit(main())
