"""End-to-end benchmark: HuggingFace GPT-NeoX (Pythia) decoding with and without
clusterfusion's fused MLP-down + residual op, measured as time per output token.

Two arms, PyTorch (HuggingFace as shipped) and clusterfusion (every decoder
layer patched by ``clusterfusion.hf.patch_model``), each in two modes:

* eager: HuggingFace ``generate`` (greedy, dynamic cache);
* graph: prefill, then one decode step captured in a CUDA graph with a
  ``StaticCache`` and replayed once per token (how a serving stack runs).

For every token count the arms run interleaved, several times, and the median is
reported: seconds for the whole request (prefill + decode), and TPOT = decode
time / new tokens. Fidelity is checked in the same run: teacher-forced (both arms
fed the same tokens) logits relative error and top-1 agreement per step, and
free-running greedy tokens compared.

    python benchmark_e2e.py                       # Pythia-2.8B config, random weights
    python benchmark_e2e.py --config 6.9b
    python benchmark_e2e.py --model /path/to/pythia-2.8b   # a local checkpoint
    python benchmark_e2e.py --tokens 16 128 1024 --modes graph --plot tpot.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time

import torch

CONFIGS = {
    "2.8b": dict(hidden_size=2560, num_attention_heads=32, intermediate_size=10240, num_hidden_layers=32, vocab_size=50304),
    "6.9b": dict(hidden_size=4096, num_attention_heads=32, intermediate_size=16384, num_hidden_layers=32, vocab_size=50432),
}
TOKENS = [16, 32, 64, 128, 256, 512, 1024, 2048]
ARMS = ("pytorch", "clusterfusion")
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


class GraphDecoder:
    """Greedy decoding with one CUDA-graph-captured decode step over a StaticCache.

    The graph reads the current token, writes the next one in place, appends it
    to a device-side history and leaves the step's logits in ``self.logits``, so
    replaying it N times decodes N tokens with no host work in between.
    """

    def __init__(self, model, prompt, max_new_tokens):
        from transformers import StaticCache

        self.model, self.prompt = model, prompt
        self.cache = StaticCache(config=model.config, max_cache_len=prompt.shape[1] + max_new_tokens + 1)
        self.token = torch.zeros(1, 1, dtype=torch.long, device="cuda")
        self.history = torch.zeros(max_new_tokens + 1, dtype=torch.long, device="cuda")
        self.position = torch.zeros(1, dtype=torch.long, device="cuda")
        with torch.no_grad():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up: lazy initialisation stays out of the capture
                self.prefill()
                for _ in range(2):
                    self._step()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = self._step()

    def _forward(self, ids):
        """Runs the model on ids, makes its greedy token current and records it."""
        logits = self.model(ids, past_key_values=self.cache, use_cache=True).logits[:, -1]
        self.token.copy_(logits.argmax(-1, keepdim=True))
        self.history.index_copy_(0, self.position, self.token[0])
        self.position.add_(1)
        return logits

    def _step(self):
        return self._forward(self.token)

    @torch.no_grad()
    def prefill(self):
        self.cache.reset()
        self.position.zero_()
        return self._forward(self.prompt)

    def timed_generate(self, new_tokens):
        """Returns (seconds for prefill + decode, decode seconds)."""
        torch.cuda.synchronize()
        start = time.perf_counter()
        self.prefill()
        torch.cuda.synchronize()
        decode_start = time.perf_counter()
        for _ in range(new_tokens - 1):
            self.graph.replay()
        torch.cuda.synchronize()
        end = time.perf_counter()
        return end - start, end - decode_start

    def greedy_tokens(self, new_tokens):
        self.prefill()
        for _ in range(new_tokens - 1):
            self.graph.replay()
        return self.history[:new_tokens].clone()

    def teacher_forced_logits(self, tokens):
        """Logits after the prompt and after each of tokens[:-1], fed regardless of the argmax."""
        out = [self.prefill().clone()]
        for t in tokens[:-1]:
            self.token.fill_(t)
            self.graph.replay()
            out.append(self.logits.clone())
        return torch.cat(out).float()


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
    """Interleaved timing of both arms. Each token count's row of medians and
    spreads goes to on_row as soon as it is measured, so a run cut short keeps
    what it measured."""
    if not token_counts:
        return
    for arm in ARMS:  # warm-up: allocator, cuBLAS and generate() set-up stay out of the figures
        decoders[arm].timed_generate(min(WARMUP_TOKENS, *token_counts))
    with progress(len(token_counts) * reps * len(ARMS), desc) as bar:
        for n in token_counts:
            samples = {arm: [] for arm in ARMS}
            for rep in range(reps):
                order = ARMS if rep % 2 == 0 else ARMS[::-1]
                for arm in order:
                    samples[arm].append(decoders[arm].timed_generate(n))
                    bar.update(1)
            row = dict(tokens=n)
            for arm in ARMS:
                total = statistics.median(s[0] for s in samples[arm])
                decode = statistics.median(s[1] for s in samples[arm])
                tpots = [s[1] / max(n - 1, 1) * 1e3 for s in samples[arm]]
                row[arm] = dict(
                    seconds=total,
                    tpot_ms=decode / max(n - 1, 1) * 1e3,
                    spread_pct=100 * (max(tpots) - min(tpots)) / statistics.median(tpots),
                )
            row["speedup"] = row["pytorch"]["seconds"] / row["clusterfusion"]["seconds"]
            row["tpot_speedup"] = row["pytorch"]["tpot_ms"] / row["clusterfusion"]["tpot_ms"]
            on_row(row)


def fidelity(graphs, steps):
    """Teacher-forced logits error / top-1 agreement, and free-running greedy agreement."""
    reference_tokens = graphs["pytorch"].greedy_tokens(steps)
    forced = reference_tokens.tolist()
    ref = graphs["pytorch"].teacher_forced_logits(forced)
    got = graphs["clusterfusion"].teacher_forced_logits(forced)
    rel = ((got - ref).norm(dim=-1) / ref.norm(dim=-1)).tolist()
    top1 = (got.argmax(-1) == ref.argmax(-1)).float()
    ours = graphs["clusterfusion"].greedy_tokens(steps).tolist()
    diverged = next((i for i, (a, b) in enumerate(zip(forced, ours)) if a != b), None)
    return dict(
        steps=steps,
        teacher_forced_max_rel_err=max(rel),
        teacher_forced_mean_rel_err=statistics.mean(rel),
        teacher_forced_top1_agreement=top1.mean().item(),
        greedy_match_rate=sum(a == b for a, b in zip(forced, ours)) / steps,
        greedy_first_divergence=diverged,
    )


def print_table_header(mode, card, source):
    print(f"\n### {mode} mode: {source}, {card}, batch 1\n")
    print("| Tokens | CF(s) | PyTorch(s) | Speedup | TPOT CF(ms) | TPOT PT(ms) | TPOT speedup | spread CF / PT |")
    print("|---|---|---|---|---|---|---|---|", flush=True)


def print_table_row(r):
    cf, pt = r["clusterfusion"], r["pytorch"]
    print(
        f"| {r['tokens']} | {cf['seconds']:.3f} | {pt['seconds']:.3f} | {r['speedup']:.2f}x | {cf['tpot_ms']:.2f} | "
        f"{pt['tpot_ms']:.2f} | {r['tpot_speedup']:.2f}x | {cf['spread_pct']:.1f}% / {pt['spread_pct']:.1f}% |",
        flush=True,
    )


def print_fidelity(fid):
    print(
        f"\nFidelity over {fid['steps']} steps (teacher-forced, both arms fed PyTorch's greedy tokens): "
        f"logits relative error max {fid['teacher_forced_max_rel_err']:.2e}, mean {fid['teacher_forced_mean_rel_err']:.2e}; "
        f"top-1 agreement {100 * fid['teacher_forced_top1_agreement']:.1f}%"
    )
    first = fid["greedy_first_divergence"]
    print(
        f"Free-running greedy: {100 * fid['greedy_match_rate']:.1f}% of tokens match; "
        f"first divergence {'none' if first is None else f'at token {first}'}",
        flush=True,
    )


def plot(path, results, card):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, rows in results.items():
        for arm, style in zip(ARMS, ("--", "-")):
            ax.plot([r["tokens"] for r in rows], [r[arm]["tpot_ms"] for r in rows], style, marker="o", label=f"{arm} ({mode})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("new tokens")
    ax.set_ylabel("TPOT (ms)")
    ax.set_title(f"Pythia decoding, batch 1, {card}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="benchmark_e2e.json")
    parser.add_argument("--plot", metavar="FILE.png")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("benchmark_e2e: no CUDA GPU found; this benchmark needs one (H100/H200 or RTX 5090).", file=sys.stderr)
        return 1
    from clusterfusion.hf import patch_model, patched, unpatch_model

    dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    model, source = load_model(args, dtype)
    prop = torch.cuda.get_device_properties(0)
    card = f"{prop.name} ({prop.multi_processor_count} SMs)"
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt_len), device="cuda",
                           generator=torch.Generator("cuda").manual_seed(args.seed))
    longest = max(max(args.tokens), args.fidelity_steps)
    print(f"{source}; {args.dtype}; {card}; torch {torch.__version__}", flush=True)

    graphs = {"pytorch": GraphDecoder(model, prompt, longest)}
    served = patch_model(model)
    if len(served) != model.config.num_hidden_layers:
        print(f"benchmark_e2e: only layers {served} could be patched", file=sys.stderr)
        return 1
    graphs["clusterfusion"] = GraphDecoder(model, prompt, longest)
    unpatch_model(model)

    fid = fidelity(graphs, args.fidelity_steps)
    print_fidelity(fid)
    results = {}

    def save():
        with open(args.json, "w") as f:
            json.dump(dict(card=card, source=source, dtype=args.dtype, torch=torch.__version__, results=results,
                           fidelity=fid), f, indent=1)

    def run_mode(mode, decoders, counts):
        results[mode] = []
        print_table_header(mode, card, source)

        def on_row(row):
            results[mode].append(row)
            print_table_row(row)
            save()

        measure(decoders, counts, args.reps, mode, on_row)

    save()
    if "graph" in args.modes:
        run_mode("graph", graphs, args.tokens)
    if "eager" in args.modes:
        eager = {"pytorch": EagerDecoder(model, prompt, contextlib.nullcontext),
                 "clusterfusion": EagerDecoder(model, prompt, lambda: patched(model))}
        run_mode("eager", eager, [n for n in args.tokens if n <= args.eager_max_tokens])
    if args.plot:
        plot(args.plot, results, card)
    return 0


if __name__ == "__main__":
    sys.exit(main())
