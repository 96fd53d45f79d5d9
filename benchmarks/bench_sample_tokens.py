"""Kernel benchmark: clusterfusion.sample_tokens against PyTorch's way to sample.

For each vocabulary, dtype and sampling setting, the time per token of:

* argmax: ``logits.argmax(-1)``, what greedy decoding costs (the floor),
* PyTorch: a sort-based sampler (sort, softmax, cumsum, top-k and top-p cut,
  inverse of the kept distribution at a uniform: what a decode step that
  samples on the device without a host synchronization runs),
* the same function under ``torch.compile`` (the strongest PyTorch baseline),
* ``clusterfusion.sample_tokens``,

for logits of two spreads (``--logit-stds``: a peaked distribution like a trained
model's and a flat one like a randomly initialised model's), each inside a CUDA
graph and in context: every step's logits come from the LM
head (``F.linear`` of a hidden state and a ``[vocab, hidden]`` weight) right
before, as in the model; the LM head's own time, measured alone the same way,
is subtracted. Figures are medians over many replays of 16 steps, divided by 16.
Prints a table and writes JSON.

    python benchmarks/bench_sample_tokens.py [--vocabs 50304 50432] [--dtypes fp16 bf16] [--logit-stds 4 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

import clusterfusion  # noqa: F401  (registers the ops)
from _timing import graph_us, print_markdown_table, print_row, start

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
SETTINGS = {  # name: (temperature, top_k, top_p)
    "top-p 0.9": (1.0, 0, 0.9),
    "top-k 50": (1.0, 50, 1.0),
    "temperature 0.7": (0.7, 0, 1.0),
}
ARMS = ("argmax", "pytorch", "torch.compile", "clusterfusion")
STEPS = 16


def pytorch_sampler(logits, uniform, temperature, top_k, top_p):
    scores = logits.float() / temperature
    sorted_scores, order = scores.sort(dim=-1, descending=True, stable=True)
    probs = sorted_scores.softmax(-1)
    cumulative = probs.cumsum(-1)
    k = torch.where(top_k > 0, top_k, probs.shape[-1])
    kept = torch.minimum((cumulative - probs < top_p).sum(-1, keepdim=True), k).clamp_(min=1)
    target = uniform[:, None] * cumulative.gather(-1, kept - 1)
    choice = torch.minimum((cumulative <= target).sum(-1, keepdim=True), kept - 1)
    return order.gather(-1, choice)


def clusterfusion_sampler(logits, uniform, temperature, top_k, top_p):
    return torch.ops.clusterfusion.sample_tokens(logits, uniform, temperature, top_k, top_p)


def argmax_sampler(logits, uniform, temperature, top_k, top_p):
    return logits.argmax(-1)


def after_lm_head(sampler):
    def step(hidden, weight, **settings):
        return sampler(F.linear(hidden, weight), **settings)

    return step


def lm_head_only(hidden, weight, **settings):
    return F.linear(hidden, weight)


def measure(args, vocab, dtype, setting, logit_std):
    temperature, top_k, top_p = SETTINGS[setting]
    weight = torch.randn(vocab, args.hidden, device="cuda", dtype=dtype) / args.hidden**0.5 * logit_std
    steps = [dict(hidden=torch.randn(1, args.hidden, device="cuda", dtype=dtype), weight=weight,
                  uniform=torch.rand(1, device="cuda"), temperature=torch.full((1,), temperature, device="cuda"),
                  top_k=torch.full((1,), top_k, device="cuda", dtype=torch.long),
                  top_p=torch.full((1,), top_p, device="cuda")) for _ in range(STEPS)]
    samplers = {"argmax": argmax_sampler, "pytorch": pytorch_sampler,
                "torch.compile": torch.compile(pytorch_sampler, dynamic=False),
                "clusterfusion": clusterfusion_sampler}
    row = dict(vocab=vocab, dtype=next(k for k, v in DTYPES.items() if v == dtype), setting=setting,
               logit_std=logit_std)
    head = graph_us(lm_head_only, steps, args.reps)
    row["lm_head_us"] = head
    for arm in args.arms:
        row[f"{arm}_us"] = graph_us(after_lm_head(samplers[arm]), steps, args.reps) - head
    if "clusterfusion" in args.arms:
        baseline = min((row[f"{a}_us"] for a in ("pytorch", "torch.compile") if f"{a}_us" in row), default=None)
        if baseline is not None:
            row["speedup"] = baseline / row["clusterfusion_us"]
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocabs", nargs="+", type=int, default=[50304])
    parser.add_argument("--dtypes", nargs="+", default=["fp16", "fp32"], choices=list(DTYPES))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--hidden", type=int, default=2560, help="the LM head's input size (Pythia-2.8B: 2560)")
    parser.add_argument("--logit-stds", nargs="+", type=float, default=[4.0, 1.0],
                        help="the logits' spread: 4 is peaked like a trained model's, 1 flat like random weights'")
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--json", default="bench_sample_tokens.json")
    args = parser.parse_args(argv)
    started = start("bench_sample_tokens", args.reps)
    if started is None:
        return 1
    card, ceiling, _ = started
    torch.manual_seed(0)
    results = []
    for vocab in args.vocabs:
        for dname in args.dtypes:
            for logit_std in args.logit_stds:
                for setting in args.settings:
                    row = measure(args, vocab, DTYPES[dname], setting, logit_std)
                    results.append(row)
                    print_row(row)
    with open(args.json, "w") as f:
        json.dump(dict(card=card, torch=torch.__version__, hidden=args.hidden, steps=STEPS, results=results), f,
                  indent=1)
    print(f"\n{card}: us per token after the LM head, in CUDA graphs (LM head subtracted)")
    columns = [("vocab", "vocab", "{}"), ("dtype", "dtype", "{}"), ("logit std", "logit_std", "{:g}"),
               ("setting", "setting", "{}")]
    columns += [(arm, f"{arm}_us", "{:.1f}") for arm in args.arms]
    columns += [("speedup vs best PyTorch", "speedup", "{:.1f}x")]
    print_markdown_table(columns, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
