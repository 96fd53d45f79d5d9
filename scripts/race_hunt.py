"""Race hunt: clusterfusion's CUDA ops in chains of layers, replayed in one CUDA
graph many times, every replay's result bit for bit the first one's.

For each op (mlp_down_residual, mlp_block_residual, attention_block,
sample_tokens) and for the real layer (attention_block then mlp_block_residual,
and gpt_neox_layer with layer_plan="one_launch": the layer kernel) it builds a chain of 8 layers with random fp16 weights scaled so values stay
O(1), each layer reading the previous layer's output: as ``hidden_states``
(sample_tokens: the previous token is the next draw's ``top_k``). The attention
layers have their own caches and share a device-side position. Per chain:

* the chain runs eagerly with programmatic dependent launch (PDL) and again with
  ``clusterfusion.tuning(pdl=False)``: the same kernels, so the same bits;
* it is captured in one CUDA graph (warmed up on a side stream first, as
  ``clusterfusion.Decoder`` does) and replayed ``--replays`` times. Before each
  replay the outputs of the previous one are poisoned (NaN; token 1, greedy, for
  tokens) and the cache rows the chain writes are set to NaN, so a kernel that
  reads its input before the previous kernel wrote it sees poison. Every replay's
  result (the last layer's output, every cache row written, every token) must
  equal the first replay's bit for bit, and the first must equal the eager runs'.

Shapes: Pythia-2.8B (hidden 2560, ffn 10240, 32 heads of 80, rotary 20) and
Pythia-6.9B (hidden 4096, ffn 16384, 32 heads of 128, rotary 32), caches of
4096 positions, attention at positions 1000 (some attention workers idle) and
4095 (the last row). ``--sanitizer`` runs small shapes (hidden 512, ffn 2048,
8 heads of 64, caches of 256) eagerly, twice per chain (PDL on, then off), no
graph, for compute-sanitizer.

Usage (from the repository root, the extension built in place):

    PYTHONPATH=. python3 scripts/race_hunt.py                  # 300 replays per chain
    PYTHONPATH=. python3 scripts/race_hunt.py --quick          # 30 replays, a smoke run
    PYTHONPATH=. python3 scripts/race_hunt.py --replays 2000
    PYTHONPATH=. PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 \\
        python3 scripts/race_hunt.py --sanitizer

Prints one line per chain (op, shape, replays, mismatching replays, the largest
absolute difference from the first replay, the eager comparisons). Exit status
1 if any chain mismatched or produced a non-finite result (or a token out of
range), 2 without a CUDA GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Callable

import torch

import clusterfusion

DTYPE = torch.float16
LAYERS = 8
QUICK_REPLAYS = 30
POISON_TOKEN = 1  # as top_k: greedy, rarely the token a large top_k draws


@dataclasses.dataclass(frozen=True)
class Shape:
    hidden: int
    ffn: int
    heads: int
    head_dim: int
    rotary: int
    vocab: int
    max_len: int
    positions: tuple[int, ...]  # where the attention chains write and attend up to


SHAPES = {
    "pythia-2.8b": Shape(2560, 10240, 32, 80, 20, 50304, 4096, (1000, 4095)),
    "pythia-6.9b": Shape(4096, 16384, 32, 128, 32, 50432, 4096, (1000, 4095)),
}
SANITIZER_SHAPES = {"small": Shape(512, 2048, 8, 64, 16, 50304, 256, (100, 255))}


@dataclasses.dataclass
class Chain:
    """`run()` launches every layer and returns the tensors the layers produced;
    `reset()` puts back what a run changes in place (the cache rows: NaN, the
    position); `result(outs)` is the 1-D tensor compared bit for bit."""

    op: str
    run: Callable[[], list[torch.Tensor]]
    result: Callable[[list[torch.Tensor]], torch.Tensor]
    reset: Callable[[], None] = lambda: None


def rnd(*shape, scale=1.0, shift=0.0):
    return (torch.randn(*shape, device="cuda") * scale + shift).to(DTYPE)


def rotary_tables(position: int, rotary: int):
    """cos and sin [1, 1, rotary] of GPT-NeoX's rotary embedding at `position`."""
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, rotary, 2, dtype=torch.float64) / rotary)
    angles = torch.cat([position * inv_freq, position * inv_freq])
    return tuple(t.to(DTYPE).cuda().reshape(1, 1, -1) for t in (angles.cos(), angles.sin()))


def mlp_weights(s: Shape) -> dict:
    return dict(
        ln_weight=rnd(s.hidden, scale=0.2, shift=1.0), ln_bias=rnd(s.hidden, scale=0.2),
        up_weight=rnd(s.ffn, s.hidden, scale=1 / math.sqrt(s.hidden)), up_bias=rnd(s.ffn, scale=0.2),
        down_weight=rnd(s.hidden, s.ffn, scale=0.5 / math.sqrt(s.ffn)), down_bias=rnd(s.hidden, scale=0.1),
    )


def attention_layer(s: Shape) -> dict:
    h = s.hidden
    return dict(
        ln_weight=rnd(h, scale=0.2, shift=1.0), ln_bias=rnd(h, scale=0.2),
        qkv_weight=rnd(3 * h, h, scale=1 / math.sqrt(h)), qkv_bias=rnd(3 * h, scale=0.2),
        dense_weight=rnd(h, h, scale=1 / math.sqrt(h)), dense_bias=rnd(h, scale=0.2),
        key_cache=rnd(1, s.heads, s.max_len, s.head_dim), value_cache=rnd(1, s.heads, s.max_len, s.head_dim),
    )


def residual_chain(op: Callable[..., torch.Tensor], layers: list[dict], x0: torch.Tensor) -> Chain:
    """`op(x, **layer)` layer after layer, each output the next layer's hidden_states."""

    def run():
        x, outs = x0, []
        for layer in layers:
            x = op(x, **layer)
            outs.append(x)
        return outs

    return Chain(op.__name__, run, lambda outs: outs[-1].reshape(-1))


def mlp_down_chain(s: Shape) -> Chain:
    layers = [dict(attn_output=rnd(1, s.hidden, scale=0.3), mlp_intermediate=rnd(1, s.ffn),
                   weight=rnd(s.hidden, s.ffn, scale=0.3 / math.sqrt(s.ffn)), bias=rnd(s.hidden, scale=0.1))
              for _ in range(LAYERS)]
    return residual_chain(clusterfusion.mlp_down_residual, layers, rnd(1, s.hidden))


def mlp_block_chain(s: Shape) -> Chain:
    layers = [dict(attn_output=rnd(1, s.hidden, scale=0.3), **mlp_weights(s)) for _ in range(LAYERS)]
    return residual_chain(clusterfusion.mlp_block_residual, layers, rnd(1, s.hidden, shift=0.3))


def attention_chain(s: Shape, position: int, layer: str) -> Chain:
    """Per layer: attention_block ("attention"), then mlp_block_residual ("blocks":
    the real layer in two ops), or the whole layer in one gpt_neox_layer ("layer");
    caches per layer, one device-side position."""
    attention = [attention_layer(s) for _ in range(LAYERS)]
    mlps = [mlp_weights(s) for _ in range(LAYERS)] if layer != "attention" else []
    cos, sin = rotary_tables(position, s.rotary)
    cache_position = torch.tensor([position], device="cuda")
    x0 = rnd(1, 1, s.hidden, shift=0.3)

    def one_launch(x, a, m):
        return clusterfusion.gpt_neox_layer(
            x, a["ln_weight"], a["ln_bias"], a["qkv_weight"], a["qkv_bias"], a["dense_weight"], a["dense_bias"],
            m["ln_weight"], m["ln_bias"], m["up_weight"], m["up_bias"], m["down_weight"], m["down_bias"], cos, sin,
            a["key_cache"], a["value_cache"], cache_position, layer_plan="one_launch")

    def run():
        x, outs = x0, []
        for i, a in enumerate(attention):
            if layer == "layer":
                x = one_launch(x, a, mlps[i])
            else:
                attn = clusterfusion.attention_block(x, **a, cos=cos, sin=sin, cache_position=cache_position)
                outs.append(attn)
                x = clusterfusion.mlp_block_residual(x, attn, **mlps[i]) if layer == "blocks" else attn
            if layer != "attention":
                outs.append(x)
        return outs

    def rows():
        return [a[name][:, :, position] for a in attention for name in ("key_cache", "value_cache")]

    def reset():
        cache_position.fill_(position)
        for row in rows():
            row.fill_(float("nan"))

    def result(outs):
        return torch.cat([outs[-1].reshape(-1)] + [row.reshape(-1) for row in rows()])

    op = {"attention": "attention_block", "blocks": "attention_block+mlp_block_residual",
          "layer": "gpt_neox_layer"}[layer]
    return Chain(f"{op} p={position}", run, result, reset)


def sample_tokens_chain(s: Shape) -> Chain:
    """Each draw's token is the next draw's top_k: the next kernel reads the previous one's output."""
    logits = [rnd(1, s.vocab) for _ in range(LAYERS)]
    uniforms = [torch.rand(1, device="cuda") for _ in range(LAYERS)]
    temperature = torch.full((1,), 0.8, device="cuda")
    top_p = torch.full((1,), 0.9, device="cuda")
    first_top_k = torch.zeros(1, dtype=torch.long, device="cuda")

    def run():
        top_k, outs = first_top_k, []
        for row, uniform in zip(logits, uniforms):
            top_k = torch.ops.clusterfusion.sample_tokens(row, uniform, temperature, top_k, top_p)
            outs.append(top_k)
        return outs

    return Chain("sample_tokens", run, torch.cat)


def chains(s: Shape):
    """The chains of one shape, built one at a time (the 6.9B ones hold gigabytes)."""
    yield lambda: mlp_down_chain(s)
    yield lambda: mlp_block_chain(s)
    for position in s.positions:
        for layer in ("attention", "blocks", "layer"):
            yield lambda position=position, layer=layer: attention_chain(s, position, layer)
    yield lambda: sample_tokens_chain(s)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def differing(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per element: whether the bits differ."""
    return bits(a) != bits(b)


def largest_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The largest |a - b| over the elements whose bits differ (inf where a NaN is involved), on the device."""
    diff = (a.double() - b.double()).abs().nan_to_num(nan=math.inf)
    return torch.where(differing(a, b), diff, 0.0).max()


def valid(result: torch.Tensor, s: Shape) -> bool:
    if result.is_floating_point():
        return bool(torch.isfinite(result).all())
    return bool(((result >= 0) & (result < s.vocab)).all())


def poison(outs: list[torch.Tensor]) -> None:
    for t in outs:
        t.fill_(float("nan") if t.is_floating_point() else POISON_TOKEN)


def eager(chain: Chain, pdl: bool) -> torch.Tensor:
    chain.reset()
    with clusterfusion.tuning(pdl=pdl):
        return chain.result(chain.run()).clone()


def replay_all(chain: Chain, replays: int) -> tuple[torch.Tensor, int, float]:
    """Captures the chain, replays it; returns the first replay's result, how many
    later replays differed from it and the largest difference."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # plans, tensor maps and lazy initialisation outside the capture
        chain.reset()
        chain.run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = chain.run()

    def replay():
        chain.reset()
        poison(outs)
        graph.replay()
        return chain.result(outs)

    first = replay().clone()
    mismatching = torch.zeros((), dtype=torch.long, device="cuda")
    worst = torch.zeros((), dtype=torch.float64, device="cuda")
    for _ in range(replays - 1):
        got = replay()
        mismatching += differing(got, first).any()
        worst = torch.maximum(worst, largest_difference(got, first))
    return first, int(mismatching), float(worst)


def hunt(chain: Chain, shape_name: str, s: Shape, replays: int, sanitizer: bool) -> bool:
    """Runs one chain's checks and prints its line; True when it passed."""
    with_pdl = eager(chain, pdl=True)
    without_pdl = eager(chain, pdl=False)
    pdl_equal = not bool(differing(with_pdl, without_pdl).any())
    checks = [f"eager pdl/no-pdl {'equal' if pdl_equal else 'DIFFER'}"]
    ok = pdl_equal and valid(with_pdl, s) and valid(without_pdl, s)
    if sanitizer:
        mismatching, worst = int(not pdl_equal), float(largest_difference(with_pdl, without_pdl))
        runs = "eager 2"
    else:
        first, mismatching, worst = replay_all(chain, replays)
        graph_equal = not bool(differing(first, with_pdl).any())
        checks.append(f"graph/eager {'equal' if graph_equal else 'DIFFER'}")
        ok = ok and graph_equal and mismatching == 0 and valid(first, s)
        runs = f"replays {replays}"
    finite = "finite" if with_pdl.is_floating_point() else "tokens in range"
    checks.append(finite if valid(with_pdl, s) else f"NOT {finite}")
    print(f"{chain.op:<42} {shape_name:<12} {runs:<13} mismatching {mismatching:<4} max abs diff {worst:<8.3g} "
          f"{', '.join(checks)}  {'ok' if ok else 'FAIL'}", flush=True)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replays", type=int, default=300, help="graph replays per chain (default 300)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REPLAYS} replays per chain: a smoke run")
    parser.add_argument("--sanitizer", action="store_true",
                        help="small shapes, two eager runs per chain (PDL on, off), no graph: for compute-sanitizer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", metavar="OP",
                        help="only the chains whose name starts with one of these (e.g. gpt_neox_layer sample_tokens)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("race_hunt: no CUDA GPU", file=sys.stderr)
        return 2
    replays = QUICK_REPLAYS if args.quick else args.replays
    if replays < 2:
        parser.error("--replays must be at least 2")
    torch.manual_seed(args.seed)
    shapes = SANITIZER_SHAPES if args.sanitizer else SHAPES
    print(f"race_hunt on {torch.cuda.get_device_name()}: {LAYERS} layers per chain, fp16, "
          + ("sanitizer mode (eager only)" if args.sanitizer else f"{replays} graph replays per chain"), flush=True)
    failed = 0
    with torch.no_grad():
        for name, s in shapes.items():
            for build in chains(s):
                chain = build()
                if args.only is None or chain.op.startswith(tuple(args.only)):
                    failed += not hunt(chain, name, s, replays, args.sanitizer)
                del chain
                torch.cuda.empty_cache()
    print(f"race_hunt: {'no mismatch' if not failed else f'{failed} chain(s) FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
