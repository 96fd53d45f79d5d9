"""End-to-end benchmark: HuggingFace GPT-NeoX (Pythia) decoding with and without
clusterfusion's fused ops, measured as time per output token.

Arms: PyTorch (HuggingFace as shipped) and clusterfusion (every decoder layer
patched by ``clusterfusion.hf.patch_model`` with ``--fusions``, by default the
fused attention block and the fused MLP block), in two modes:

* graph: through ``clusterfusion.Decoder`` (what users call): prefill, then one
  decode step captured in a CUDA graph over a ``StaticCache`` and replayed once
  per token. Both arms also run with ``torch.compile(model.forward)`` inside that
  graph (what a user who wants speed runs today): four arms, PyTorch, PyTorch
  compiled, clusterfusion, clusterfusion compiled. Each arm's set-up time
  (Decoder, warm-up, compilation and capture) is reported, and for the fastest
  clusterfusion arm the Decoder's ways (greedy, top-p sampling, streaming)
  against replaying its bare captured step.
* eager: HuggingFace ``generate`` (greedy, dynamic cache), PyTorch and clusterfusion.

For every token count the arms run interleaved, several times, and the median is
reported: seconds for the whole request (prefill + decode), and TPOT = decode
time / new tokens. Speedups are against the fastest PyTorch arm of the mode.
Fidelity is checked in the same run: teacher-forced (every arm fed PyTorch's
tokens) logits relative error and top-1 agreement per step against the
uncompiled PyTorch arm, and free-running greedy tokens compared.

    python benchmark_e2e.py                       # Pythia-2.8B config, random weights
    python benchmark_e2e.py --config 6.9b
    python benchmark_e2e.py --model /path/to/pythia-2.8b   # a local checkpoint
    python benchmark_e2e.py --tokens 16 128 1024 --modes graph --plot tpot.png
    python benchmark_e2e.py --no-compile           # without the torch.compile arms
    python benchmark_e2e.py --fusions mlp_block_residual    # the MLP block only (attention stays HuggingFace's)
    python benchmark_e2e.py --fusions attention_block,mlp_down_residual
    python benchmark_e2e.py --layer-plan one_launch    # the layer kernel where it serves the model
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import torch

CONFIGS = {
    "2.8b": dict(hidden_size=2560, num_attention_heads=32, intermediate_size=10240, num_hidden_layers=32, vocab_size=50304),
    "6.9b": dict(hidden_size=4096, num_attention_heads=32, intermediate_size=16384, num_hidden_layers=32, vocab_size=50432),
}
TOKENS = [16, 32, 64, 128, 256, 512, 1024, 2048]
EAGER_ARMS = ("pytorch", "clusterfusion")
COMPILED_ARMS = ("pytorch_compiled", "clusterfusion_compiled")
LABELS = {
    "pytorch": "PyTorch",
    "pytorch_compiled": "PyTorch + compile",
    "clusterfusion": "clusterfusion",
    "clusterfusion_compiled": "clusterfusion + compile",
}
LAYER_PLANS = ("auto", "one_launch", "blocks")  # clusterfusion.tuning's layer_plan
WARMUP_TOKENS = 16  # enough to set up the allocator, cuBLAS and generate(); a long warm-up only costs time


def load_model(args, dtype):
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM

    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, local_files_only=True)
        return model.to("cuda").eval(), args.model
    torch.manual_seed(args.seed)
    config = GPTNeoXConfig(
        **CONFIGS[args.config], rotary_pct=0.25, max_position_embeddings=4096, use_parallel_residual=True
    )
    with torch.device("cuda"):
        model = GPTNeoXForCausalLM(config)
    return model.to(dtype).eval(), f"Pythia-{args.config} config, random weights"


def streamed_bytes(model) -> int:
    """Bytes a decode step must read at least once, besides the cache: every
    parameter, of the input embedding only the token's row."""
    embed_in = model.get_input_embeddings().weight
    row = embed_in.shape[1] * embed_in.element_size()
    total = sum(p.numel() * p.element_size() for p in model.parameters()) - embed_in.numel() * embed_in.element_size()
    tied = model.get_output_embeddings().weight is embed_in  # then the LM head reads all of it
    return total + (embed_in.numel() * embed_in.element_size() if tied else row)


def floor_ms(model, prompt_len: int, new_tokens: int, ceiling_tbs: float) -> float:
    """The decode step's floor, averaged over a request: the parameters and the keys
    and values in use (prompt_len + new_tokens / 2 positions on average) at the read ceiling."""
    c = model.config
    element = next(model.parameters()).element_size()
    kv = 2 * c.num_hidden_layers * c.hidden_size * (prompt_len + new_tokens / 2) * element
    return (streamed_bytes(model) + kv) / (ceiling_tbs * 1e12) * 1e3


def _timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


class DecoderArm:
    """A graph-mode arm measured through ``clusterfusion.Decoder``, as users call it:
    eager prefill, then the decode step captured in a CUDA graph over its static
    cache. ``setup_seconds`` is the time to make the Decoder and capture its
    greedy step (compilation included)."""

    def __init__(self, model, prompt, max_new_tokens, fusions, compile):
        from clusterfusion import Decoder

        self.prompt = prompt
        start = time.perf_counter()
        self.decoder = Decoder(model, max_length=prompt.shape[1] + max_new_tokens + 1, fusions=fusions, compile=compile)
        self.decoder.generate(prompt, 2)
        torch.cuda.synchronize()
        self.setup_seconds = time.perf_counter() - start

    @staticmethod
    def _request_and_decode_seconds(request, new_tokens):
        """(seconds for request(new_tokens), decode seconds): the request's less a
        one-token request's (its prefill)."""
        first = _timed(lambda: request(1))
        total = _timed(lambda: request(new_tokens))
        return total, max(total - first, 0.0)

    def timed_generate(self, new_tokens, **sampling):
        return self._request_and_decode_seconds(lambda n: self.decoder.generate(self.prompt, n, **sampling), new_tokens)

    def timed_stream(self, new_tokens):
        return self._request_and_decode_seconds(lambda n: list(self.decoder.stream(self.prompt, n)), new_tokens)

    def timed_bare_replays(self, new_tokens):
        """The captured greedy step replayed back to back after a one-token request's
        prefill, nothing else: the floor of a token."""
        self.decoder.generate(self.prompt, 1)  # a fresh request: the cache has room for the replays
        graph = self.decoder._graphs[False]
        seconds = _timed(lambda: [graph.replay() for _ in range(new_tokens - 1)])
        return seconds, seconds

    def greedy_tokens(self, new_tokens):
        return self.decoder.generate(self.prompt, new_tokens)

    def teacher_forced_logits(self, tokens):
        return self.decoder.teacher_forced_logits(self.prompt, tokens)


class EagerDecoder:
    """HuggingFace generate(), greedy, exactly new_tokens tokens."""

    def __init__(self, model, prompt, patch):
        self.model, self.prompt, self.patch = model, prompt, patch

    def _seconds(self, new_tokens):
        torch.cuda.synchronize()
        start = time.perf_counter()
        self.model.generate(
            self.prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0
        )
        torch.cuda.synchronize()
        return time.perf_counter() - start

    @torch.no_grad()
    def timed_generate(self, new_tokens):
        with self.patch():
            first = self._seconds(1)
            total = self._seconds(new_tokens)
        # Decode time: the whole request less a prefill-only request.
        return total, max(total - first, 0.0)


def progress(total, desc):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, file=sys.stderr, leave=False)
    except ImportError:
        return contextlib.nullcontext(type("NoBar", (), {"update": lambda self, n=1: None})())


def measure(decoders, token_counts, reps, desc, on_row):
    """Interleaved timing of every arm in `decoders`. Each token count's row of
    medians and spreads goes to on_row as soon as it is measured, so a run cut
    short keeps what it measured."""
    if not token_counts:
        return
    arms = tuple(decoders)
    for arm in arms:  # warm-up: allocator, cuBLAS and generate() set-up stay out of the figures
        decoders[arm].timed_generate(min(WARMUP_TOKENS, *token_counts))
    with progress(len(token_counts) * reps * len(arms), desc) as bar:
        for n in token_counts:
            samples = {arm: [] for arm in arms}
            for rep in range(reps):
                order = arms if rep % 2 == 0 else arms[::-1]
                for arm in order:
                    samples[arm].append(decoders[arm].timed_generate(n))
                    bar.update(1)
            row = dict(tokens=n)
            for arm in arms:
                total = statistics.median(s[0] for s in samples[arm])
                decode = statistics.median(s[1] for s in samples[arm])
                tpots = [s[1] / max(n - 1, 1) * 1e3 for s in samples[arm]]
                row[arm] = dict(
                    seconds=total,
                    tpot_ms=decode / max(n - 1, 1) * 1e3,
                    spread_pct=100 * (max(tpots) - min(tpots)) / statistics.median(tpots),
                )
            baseline = min((arm for arm in arms if arm.startswith("pytorch")), key=lambda a: row[a]["tpot_ms"])
            row["fastest_pytorch"] = baseline
            for arm in arms:
                if arm.startswith("clusterfusion"):
                    row[arm]["speedup"] = row[baseline]["seconds"] / row[arm]["seconds"]
                    row[arm]["tpot_speedup"] = row[baseline]["tpot_ms"] / row[arm]["tpot_ms"]
            on_row(row)


def decoder_overheads(arm, new_tokens, reps):
    """TPOT of the ways to use one Decoder, against replaying its bare captured step."""
    ways = {
        "bare captured step": arm.timed_bare_replays,
        "generate, greedy": arm.timed_generate,
        "generate, top-p 0.9": lambda n: arm.timed_generate(n, do_sample=True, top_p=0.9),
        "stream, greedy": arm.timed_stream,
    }
    for way in ways.values():  # warm-up, and the sampling step's capture
        way(WARMUP_TOKENS)
    return {
        name: statistics.median(way(new_tokens)[1] for _ in range(reps)) / (new_tokens - 1) * 1e3
        for name, way in ways.items()
    }


def print_decoder_overheads(tpot, label):
    print(f"\nclusterfusion.Decoder ({label}): ms per token, and against the bare captured step\n")
    print("| way | TPOT (ms) | vs bare step |")
    print("|---|---|---|")
    for name, ms in tpot.items():
        print(f"| {name} | {ms:.3f} | {ms / tpot['bare captured step']:.3f} |", flush=True)


def fidelity(graphs, steps):
    """Against the uncompiled PyTorch arm, for every other arm: teacher-forced
    logits error and top-1 agreement, and free-running greedy agreement."""
    reference_tokens = graphs["pytorch"].greedy_tokens(steps)
    forced = reference_tokens.tolist()
    ref = graphs["pytorch"].teacher_forced_logits(forced)
    result = dict(steps=steps)
    for arm, decoder in graphs.items():
        if arm == "pytorch":
            continue
        got = decoder.teacher_forced_logits(forced)
        rel = ((got - ref).norm(dim=-1) / ref.norm(dim=-1)).tolist()
        ours = decoder.greedy_tokens(steps).tolist()
        diverged = next((i for i, (a, b) in enumerate(zip(forced, ours)) if a != b), None)
        result[arm] = dict(
            teacher_forced_max_rel_err=max(rel),
            teacher_forced_mean_rel_err=statistics.mean(rel),
            teacher_forced_top1_agreement=(got.argmax(-1) == ref.argmax(-1)).float().mean().item(),
            greedy_match_rate=sum(a == b for a, b in zip(forced, ours)) / steps,
            greedy_first_divergence=diverged,
        )
    return result


def print_table_header(mode, card, source, arms, ceiling):
    print(f"\n### {mode} mode: {source}, {card}, batch 1\n")
    print("TPOT in ms per token; speedups against the fastest PyTorch arm of the row (TPOT, and whole-request seconds); "
          f"floor: the parameters and the keys and values in use at the read ceiling ({ceiling:.2f} TB/s), "
          "and each arm's share of it (floor / TPOT).\n")
    cf_arms = [a for a in arms if a.startswith("clusterfusion")]
    cols = [f"TPOT {LABELS[a]}" for a in arms] + ["fastest PyTorch"]
    cols += [f"{LABELS[a]} speedup (TPOT / request)" for a in cf_arms] + ["floor"]
    cols += [f"{LABELS[a]} of floor" for a in arms] + ["spread (max-min)/median"]
    print("| Tokens | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|", flush=True)


def print_table_row(r, arms):
    cells = [f"{r[a]['tpot_ms']:.2f}" for a in arms] + [LABELS[r["fastest_pytorch"]]]
    cells += [f"{r[a]['tpot_speedup']:.2f}x / {r[a]['speedup']:.2f}x" for a in arms if a.startswith("clusterfusion")]
    cells.append(f"{r['floor_ms']:.2f}")
    cells += [f"{100 * r['floor_ms'] / r[a]['tpot_ms']:.0f}%" for a in arms]
    cells.append(" / ".join(f"{r[a]['spread_pct']:.1f}%" for a in arms))
    print(f"| {r['tokens']} | " + " | ".join(cells) + " |", flush=True)


def print_fidelity(fid):
    print(f"\nFidelity over {fid['steps']} steps against uncompiled PyTorch (teacher-forced: every arm fed its greedy tokens):")
    for arm, f in fid.items():
        if arm == "steps":
            continue
        first = f["greedy_first_divergence"]
        print(
            f"  {LABELS[arm]}: logits relative error max {f['teacher_forced_max_rel_err']:.2e}, "
            f"mean {f['teacher_forced_mean_rel_err']:.2e}; top-1 agreement {100 * f['teacher_forced_top1_agreement']:.1f}%; "
            f"free-running greedy {100 * f['greedy_match_rate']:.1f}% of tokens match, "
            f"first divergence {'none' if first is None else f'at token {first}'}",
            flush=True,
        )


def plot(path, results, card):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, rows in results.items():
        for arm in [a for a in LABELS if rows and a in rows[0]]:
            style = "-" if arm.startswith("clusterfusion") else "--"
            ax.plot([r["tokens"] for r in rows], [r[arm]["tpot_ms"] for r in rows], style, marker="o",
                    label=f"{LABELS[arm]} ({mode})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("new tokens")
    ax.set_ylabel("TPOT (ms)")
    ax.set_title(f"Pythia decoding, batch 1, {card}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exits through the parser (status 2, naming the argument) on a value argparse's types let through."""
    from clusterfusion._fusions import parse_fusions

    for name in ("tokens", "reps", "prompt_len"):
        values = getattr(args, name)
        if any(v < 1 for v in (values if isinstance(values, list) else [values])):
            parser.error(f"argument --{name.replace('_', '-')}: must be >= 1; got {values}")
    for name in ("fidelity_steps", "eager_max_tokens"):
        if getattr(args, name) < 0:
            parser.error(f"argument --{name.replace('_', '-')}: must be >= 0; got {getattr(args, name)}")
    if args.model is not None and not os.path.isdir(args.model):
        parser.error(f"argument --model: {args.model!r} is not a directory")
    try:
        parse_fusions(args.fusions, "benchmark_e2e")
    except ValueError as error:
        parser.error(f"argument --fusions: {error}")


def layer_kernel_summary(model) -> str:
    """How the one-launch layer kernel runs the model's layers on this card, or why it does not."""
    import clusterfusion

    layer = model.gpt_neox.layers[0]
    try:
        plan = clusterfusion.gpt_neox_layer_plan(layer.attention.query_key_value.weight,
                                                 layer.mlp.dense_h_to_4h.weight, model.config.num_attention_heads)
    except ValueError as error:
        return f"not served, the blocks run instead ({error})"
    return f"{plan['ctas']} CTAs in clusters of {plan['cluster_size']}, {plan['stages']} weight stages"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=list(CONFIGS), default="2.8b", help="model size for random weights")
    parser.add_argument("--model", help="local checkpoint folder (overrides --config)")
    parser.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    parser.add_argument("--tokens", type=int, nargs="+", default=TOKENS, help="new-token counts")
    parser.add_argument("--modes", nargs="+", choices=["graph", "eager"], default=["graph", "eager"])
    parser.add_argument("--eager-max-tokens", type=int, default=max(TOKENS),
                        help="skip eager runs above this many tokens (eager decoding is host-bound and slow)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions per token count")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--fidelity-steps", type=int, default=128)
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="graph mode without the torch.compile arms")
    parser.add_argument("--fusions", default="auto", type=lambda s: s if s == "auto" else tuple(s.split(",")),
                        help="what serves the clusterfusion arms' layers: auto (every fusion) or a comma-separated "
                             "selection of attention_block, mlp_block_residual, mlp_down_residual")
    parser.add_argument("--layer-plan", choices=LAYER_PLANS, default="auto",
                        help="how gpt_neox_layer runs the clusterfusion arms' layers (clusterfusion.tuning): auto, "
                             "one_launch (the layer kernel) or blocks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="benchmark_e2e.json")
    parser.add_argument("--plot", metavar="FILE.png")
    args = parser.parse_args(argv)
    check_args(parser, args)  # before the GPU check: a bad argument is reported on any machine
    if not torch.cuda.is_available():
        print("benchmark_e2e: no CUDA GPU found; this benchmark needs one (H100/H200 or RTX 5090).", file=sys.stderr)
        return 1
    import clusterfusion

    with clusterfusion.tuning(layer_plan=args.layer_plan):
        return run(args)


def run(args: argparse.Namespace) -> int:
    """The benchmark, on a CUDA GPU, with arguments checked."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmarks"))
    from _timing import read_ceiling
    from clusterfusion.hf import patched

    dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    model, source = load_model(args, dtype)
    prop = torch.cuda.get_device_properties(0)
    card = f"{prop.name} ({prop.multi_processor_count} SMs)"
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt_len), device="cuda",
                           generator=torch.Generator("cuda").manual_seed(args.seed))
    longest = max(max(args.tokens), args.fidelity_steps)
    ceiling, probes = read_ceiling(20)
    print(f"{source}; {args.dtype}; {card}; read ceiling {ceiling:.2f} TB/s; torch {torch.__version__}; "
          f"layer_plan {args.layer_plan}", flush=True)
    if args.layer_plan == "one_launch":
        print(f"layer kernel: {layer_kernel_summary(model)}", flush=True)

    def decoder(arm):
        compiled = arm.endswith("_compiled")
        if compiled:
            torch._dynamo.reset()  # the other arm's compiled code must not serve this one
        fusions = args.fusions if arm.startswith("clusterfusion") else None
        d = DecoderArm(model, prompt, longest, fusions, compiled)
        served = {f: len(i) for f, i in getattr(d.decoder.served_layers, "by_fusion", {}).items()}
        print(f"{LABELS[arm]}: set-up (Decoder, warm-up{', compilation' if compiled else ''}, capture) "
              f"{d.setup_seconds:.1f} s" + (f"; layers served by {served}" if served else ""), flush=True)
        if fusions and len(d.decoder.served_layers) != model.config.num_hidden_layers:
            raise SystemExit(f"benchmark_e2e: the fused op serves only layers {d.decoder.served_layers}")
        return d

    graph_arms = EAGER_ARMS + (COMPILED_ARMS if args.compile else ())
    graphs = {arm: decoder(arm) for arm in graph_arms}
    setup = {arm: d.setup_seconds for arm, d in graphs.items()}

    fid = fidelity(graphs, args.fidelity_steps)
    print_fidelity(fid)
    results = {}

    def save():
        with open(args.json, "w") as f:
            json.dump(dict(card=card, read_ceiling_tbs=ceiling, read_probes_tbs=probes, source=source, dtype=args.dtype,
                           fusions=args.fusions, layer_plan=args.layer_plan,
                           torch=torch.__version__, results=results,
                           fidelity=fid, setup_seconds=setup), f, indent=1)

    def run_mode(mode, decoders, counts):
        results[mode] = []
        print_table_header(mode, card, source, tuple(decoders), ceiling)

        def on_row(row):
            row["floor_ms"] = floor_ms(model, args.prompt_len, row["tokens"], ceiling)
            results[mode].append(row)
            print_table_row(row, tuple(decoders))
            save()

        measure(decoders, counts, args.reps, mode, on_row)

    save()
    if "graph" in args.modes:
        run_mode("graph", graphs, args.tokens)
        fastest = min((a for a in graphs if a.startswith("clusterfusion")), key=lambda a: results["graph"][-1][a]["tpot_ms"])
        results["decoder"] = decoder_overheads(graphs[fastest], max(args.tokens), args.reps)
        print_decoder_overheads(results["decoder"], LABELS[fastest])
        save()
    if "eager" in args.modes:
        eager = {"pytorch": EagerDecoder(model, prompt, contextlib.nullcontext),
                 "clusterfusion": EagerDecoder(model, prompt, lambda: patched(model, args.fusions))}
        run_mode("eager", eager, [n for n in args.tokens if n <= args.eager_max_tokens])
    if args.plot:
        plot(args.plot, results, card)
    return 0


if __name__ == "__main__":
    sys.exit(main())
