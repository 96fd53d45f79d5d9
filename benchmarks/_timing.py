"""Shared by the kernel benchmarks: their common options and start-up, CUDA-event
medians, CUDA-graph timing of a list of layers, timing in context (after the
add that writes a block's input), eager host cost, and the card's streaming-read ceiling."""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time

import torch


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


def run_layers(fn, layers):
    return [fn(**layer) for layer in layers]


def eager_us(fn, layers, reps):
    run_layers(fn, layers)
    return median_ms(lambda: run_layers(fn, layers), reps) * 1e3 / len(layers)


def graph_us(fn, layers, reps):
    """us per layer of fn over every layer, captured in one CUDA graph and replayed."""
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


def after_residual(block):
    """A block as the model runs it: an add (the previous layer's residual) writes
    its ``hidden_states`` first, so it is timed after the kernel that produces its input."""

    def layer(previous, residual, **block_args):
        return block(previous + residual, **block_args)

    return layer


def residual_only(previous, residual, **block_args):
    """The add of :func:`after_residual` alone, whose time is subtracted."""
    return previous + residual


def print_markdown_table(columns, rows) -> None:
    """Prints rows as a Markdown table; columns: (title, key, format) each, "-" where a row lacks the key."""
    print("| " + " | ".join(title for title, _, _ in columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(fmt.format(r[key]) if key in r else "-" for _, key, fmt in columns) + " |")


def launch_tuning(args, setting: str):
    """The ``clusterfusion.tuning`` block that ``--plan`` (for the tuning setting
    `setting`) and ``--no-pdl`` ask for; a no-op when neither is given."""
    import clusterfusion

    if args.plan is None and args.pdl:
        return contextlib.nullcontext()
    return clusterfusion.tuning(**{setting: args.plan}, pdl=args.pdl)


def print_row(row: dict, skip=()) -> None:
    """One measured row as a JSON line, floats rounded, without the keys in `skip`."""
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items() if k not in skip}),
          flush=True)


def save_results(args, card, ceiling, probes, results, **extra) -> None:
    """The run's JSON at ``--json``: the card, its read ceiling, the tuning flags, `extra` and the rows."""
    with open(args.json, "w") as f:
        json.dump(dict(card=card, read_ceiling_tbs=ceiling, read_probes_tbs=probes, torch=torch.__version__,
                       plan=args.plan, pdl=args.pdl, **extra, results=results), f, indent=1)


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


def _triton_read_probe():
    """A plain streaming-read kernel (each program sums 64 KB), or None without Triton."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def read_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr, ITERS: tl.constexpr):
        base = tl.program_id(0) * BLOCK * ITERS
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for i in range(ITERS):
            offsets = base + i * BLOCK + tl.arange(0, BLOCK)
            acc += tl.load(x_ptr + offsets, mask=offsets < n, other=0.0).to(tl.float32)
        tl.store(out_ptr + tl.program_id(0), tl.sum(acc))

    def probe(buf):
        block, iters = 4096, 8
        programs = triton.cdiv(buf.numel(), block * iters)
        out = torch.empty(programs, device=buf.device)
        return lambda: read_kernel[(programs,)](buf, out, buf.numel(), BLOCK=block, ITERS=iters)

    return probe


def read_ceiling(reps: int) -> tuple[float, dict[str, float]]:
    """The card's streaming-read bandwidth in TB/s: the best of several probes over
    1 GiB of random fp16 (torch.sum, torch.amax, a Triton streaming kernel), and each probe's figure."""
    buf = torch.randn(1 << 29, device="cuda", dtype=torch.float16)
    probes = {"torch.sum": lambda: buf.sum(), "torch.amax": lambda: buf.amax()}
    triton_probe = _triton_read_probe()
    if triton_probe is not None:
        probes["triton streaming read"] = triton_probe(buf)
    figures = {}
    for name, run in probes.items():
        for _ in range(3):
            run()
        figures[name] = (1 << 30) / (median_ms(run, reps) * 1e-3) / 1e12
    return max(figures.values()), figures  # the 1 GiB buffer goes with the probes


def add_common_arguments(parser: argparse.ArgumentParser, *, shapes, dtypes, arms, m, reps, plan_help, json):
    parser.add_argument("--shapes", nargs="+", default=list(shapes), choices=list(shapes))
    parser.add_argument("--dtypes", nargs="+", default=list(dtypes), choices=list(dtypes))
    if m is not None:
        parser.add_argument("--m", nargs="+", type=int, default=m, help="token counts (rows of hidden_states)")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--reps", type=int, default=reps)
    parser.add_argument("--arms", nargs="+", default=list(arms), choices=list(arms), help="what to time (default: all)")
    parser.add_argument("--no-context", dest="context", action="store_false", help="skip the in-context timings")
    parser.add_argument("--plan", help=plan_help)
    parser.add_argument("--no-pdl", dest="pdl", action="store_false", help="turn programmatic dependent launch off")
    parser.add_argument("--json", default=json)


def add_context_arguments(parser: argparse.ArgumentParser, contexts: list[int]) -> None:
    """``--contexts`` (tokens attended to) and ``--max-len`` (positions the static caches hold)."""
    parser.add_argument("--contexts", nargs="+", type=int, default=contexts,
                        help="tokens attended to, the new one included")
    parser.add_argument("--max-len", type=int, default=2048, help="positions the static caches hold")


def parse_context_arguments(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """Parses argv, checking every context fits the caches."""
    args = parser.parse_args(argv)
    if any(c < 1 or c > args.max_len for c in args.contexts):
        parser.error(f"--contexts must be in [1, --max-len = {args.max_len}]; got {args.contexts}")
    return args


def start(name: str, reps: int):
    """Seeds torch, lets torch.compile keep a graph per row, names the card and measures
    its read ceiling (printed); returns (card, ceiling TB/s, each probe's TB/s), or None without a GPU."""
    if not torch.cuda.is_available():
        print(f"{name}: no CUDA GPU available", file=sys.stderr)
        return None
    torch.manual_seed(0)
    torch._dynamo.config.cache_size_limit = 64
    prop = torch.cuda.get_device_properties(0)
    card = f"{prop.name} ({prop.multi_processor_count} SMs, {prop.L2_cache_size >> 20} MB L2)"
    ceiling, probes = read_ceiling(reps)
    print(f"card: {card}; streaming read ceiling {ceiling:.2f} TB/s, best of "
          + ", ".join(f"{k} {v:.2f}" for k, v in probes.items()) + f"; torch {torch.__version__}", flush=True)
    return card, ceiling, probes
