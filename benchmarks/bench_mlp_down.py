"""Kernel benchmark: clusterfusion's fused MLP-down + residual against PyTorch.

In one run on one GPU it measures the card's streaming-read ceiling, then for
each shape, dtype and row count the time per layer of

* PyTorch: ``F.linear(x, W, b) + attn + hidden`` (what HuggingFace runs),
  eagerly and inside a CUDA graph,
* the same function under ``torch.compile``, inside a CUDA graph,
* ``clusterfusion.mlp_down_residual``, eagerly and inside a CUDA graph.

Every figure is the median over many repetitions of 32 layers with 32 distinct
weight sets (far more than the L2 cache), from random data, divided by 32.
It also reports the host cost of one eager call. Prints a table and writes JSON.

    python benchmarks/bench_mlp_down.py [--shapes 2.8b 6.9b] [--rows 1 2 4 8 16] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import clusterfusion

SHAPES = {"2.8b": (2560, 10240), "6.9b": (4096, 16384)}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def pytorch_layer(hidden_states, attn_output, mlp_intermediate, weight, bias):
    return F.linear(mlp_intermediate, weight, bias) + attn_output + hidden_states


def clusterfusion_layer(hidden_states, attn_output, mlp_intermediate, weight, bias):
    return clusterfusion.mlp_down_residual(hidden_states, attn_output, mlp_intermediate, weight, bias)


def median_ms(run, reps: int) -> float:
    """Median device time of run() over reps, timed with CUDA events."""
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def read_ceiling_tbs(reps: int) -> float:
    """Streaming read bandwidth of the card: a sum over 1 GiB of random fp16."""
    buf = torch.randn(1 << 29, device="cuda", dtype=torch.float16)
    for _ in range(3):
        buf.sum()
    ms = median_ms(lambda: buf.sum(), reps)
    del buf
    return (1 << 30) / (ms * 1e-3) / 1e12


def make_weights(hidden, ffn, dtype, layers):
    scale = ffn**-0.5
    return [
        (torch.randn(hidden, ffn, device="cuda", dtype=dtype) * scale, torch.randn(hidden, device="cuda", dtype=dtype))
        for _ in range(layers)
    ]


def make_layers(weights, rows, dtype):
    hidden, ffn = weights[0][0].shape
    return [
        dict(
            hidden_states=torch.randn(rows, hidden, device="cuda", dtype=dtype),
            attn_output=torch.randn(rows, hidden, device="cuda", dtype=dtype),
            mlp_intermediate=torch.randn(rows, ffn, device="cuda", dtype=dtype),
            weight=w,
            bias=b,
        )
        for w, b in weights
    ]


def run_layers(fn, layers):
    return [fn(**layer) for layer in layers]


def eager_us(fn, layers, reps):
    run_layers(fn, layers)
    return median_ms(lambda: run_layers(fn, layers), reps) * 1e3 / len(layers)


def graph_us(fn, layers, reps):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run_layers(fn, layers)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run_layers(fn, layers)
    for _ in range(3):
        graph.replay()
    us = median_ms(graph.replay, reps) * 1e3 / len(layers)
    del graph
    return us


def host_us(fn, layer, calls=200):
    """CPU time of one eager call, without synchronizing."""
    fn(**layer)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn(**layer)
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def layer_bytes(hidden, ffn, rows, dtype):
    elem = torch.empty((), dtype=dtype).element_size()
    return elem * (hidden * ffn + hidden + rows * ffn + 3 * rows * hidden)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument(
        "--arms", nargs="+", default=["pytorch", "compile", "clusterfusion"],
        choices=["pytorch", "compile", "clusterfusion"], help="what to time (default: all)",
    )
    parser.add_argument("--json", default="bench_mlp_down.json")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("bench_mlp_down: no CUDA GPU available", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    torch._dynamo.config.cache_size_limit = 64
    prop = torch.cuda.get_device_properties(0)
    card = f"{prop.name} ({prop.multi_processor_count} SMs, {prop.L2_cache_size >> 20} MB L2)"
    ceiling = read_ceiling_tbs(args.reps)
    print(f"card: {card}; streaming read ceiling {ceiling:.2f} TB/s; torch {torch.__version__}", flush=True)

    compiled = torch.compile(pytorch_layer, dynamic=False) if "compile" in args.arms else None
    results = []
    for shape in args.shapes:
        hidden, ffn = SHAPES[shape]
        for dname in args.dtypes:
            dtype = DTYPES[dname]
            weights = make_weights(hidden, ffn, dtype, args.layers)
            for rows in args.rows:
                layers = make_layers(weights, rows, dtype)
                row = dict(shape=shape, hidden=hidden, ffn=ffn, dtype=dname, rows=rows)
                row["floor_us"] = hidden * ffn * layers[0]["weight"].element_size() / (ceiling * 1e12) * 1e6
                if "pytorch" in args.arms:
                    row["pytorch_eager_us"] = eager_us(pytorch_layer, layers, args.reps)
                    row["pytorch_graph_us"] = graph_us(pytorch_layer, layers, args.reps)
                    row["pytorch_host_us"] = host_us(pytorch_layer, layers[0])
                if compiled is not None:
                    row["compile_graph_us"] = graph_us(compiled, layers, args.reps)
                if "clusterfusion" in args.arms:
                    row["cf_eager_us"] = eager_us(clusterfusion_layer, layers, args.reps)
                    row["cf_graph_us"] = graph_us(clusterfusion_layer, layers, args.reps)
                    row["cf_host_us"] = host_us(clusterfusion_layer, layers[0])
                    row["cf_tbs"] = layer_bytes(hidden, ffn, rows, dtype) / (row["cf_graph_us"] * 1e-6) / 1e12
                    row["cf_pct_ceiling"] = 100 * row["cf_tbs"] / ceiling
                if "pytorch" in args.arms and "clusterfusion" in args.arms:
                    row["speedup_graph"] = row["pytorch_graph_us"] / row["cf_graph_us"]
                    row["speedup_eager"] = row["pytorch_eager_us"] / row["cf_eager_us"]
                    row["host_ratio"] = row["cf_host_us"] / row["pytorch_host_us"]
                results.append(row)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
                del layers
            del weights
            torch.cuda.empty_cache()

    with open(args.json, "w") as f:
        json.dump(dict(card=card, read_ceiling_tbs=ceiling, torch=torch.__version__, results=results), f, indent=1)

    print(f"\n{card}, read ceiling {ceiling:.2f} TB/s; us per layer (median, 32 layers, distinct weights)")
    header = "| shape | dtype | M | PT eager | PT graph | compile graph | CF eager | CF graph | floor | CF TB/s | % ceiling | speedup (graph) | host PT / CF |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))

    def cell(r, key, fmt):
        return fmt.format(r[key]) if key in r else "-"

    for r in results:
        print(
            f"| {r['shape']} | {r['dtype']} | {r['rows']} | {cell(r, 'pytorch_eager_us', '{:.1f}')} | "
            f"{cell(r, 'pytorch_graph_us', '{:.1f}')} | {cell(r, 'compile_graph_us', '{:.1f}')} | "
            f"{cell(r, 'cf_eager_us', '{:.1f}')} | {cell(r, 'cf_graph_us', '{:.1f}')} | {r['floor_us']:.1f} | "
            f"{cell(r, 'cf_tbs', '{:.2f}')} | {cell(r, 'cf_pct_ceiling', '{:.1f}%')} | "
            f"{cell(r, 'speedup_graph', '{:.2f}x')} | {cell(r, 'pytorch_host_us', '{:.1f}')} / {cell(r, 'cf_host_us', '{:.1f}')} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
