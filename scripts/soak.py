"""Soak test of clusterfusion.Decoder: one Decoder serves many requests, each
request's tokens equal to what a fresh Decoder gives for it, and the GPU memory
in use does not grow.

The model is a small random GPT-NeoX (transformers' GPTNeoXConfig: hidden 256,
4 layers, 4 heads of 64 so that every fused op serves it, vocab 512) in fp16 on
the GPU; the Decoder's max_length is 64. A pool of 40 distinct request specs
mixes greedy choice and sampling (temperature, top_k, top_p, a seeded
torch.Generator on the CPU or the GPU), generate and stream, prompts of 1 up to
max_length - max_new_tokens tokens (several filling the cache to exactly
max_length, one with a single new token that only the prefill produces), prompts
1-D or [1, length], int64 or int32, on the CPU or the GPU, and eos_token_id on
some (a token the request produces half-way, or one it never produces). Each
spec's reference tokens come from a fresh Decoder (a new Decoder on the same
model) serving it once.

The soak Decoder then serves --requests requests (default 1000) drawn from the
pool in a shuffled order. The first two are fixed: a greedy request of exactly
max_length tokens, then the first sampling request (capturing the sampling step
right after the cache was filled). Every request's tokens must equal its spec's
reference; torch.cuda.memory_allocated() is read after every 100 requests and
must not exceed its value after the first 100.

Usage (from the repository root, the extension built in place):

    PYTHONPATH=. python3 scripts/soak.py                  # 1000 requests
    PYTHONPATH=. python3 scripts/soak.py --requests 300   # shorter (gpu_check.sh --quick)

Prints the memory series and a summary line. Exit status 1 on any mismatch or
growth (an exception ends the run with its traceback), 2 without a CUDA GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import random
import sys

import torch

MAX_LENGTH = 64
VOCAB = 512
SPECS = 40
EVERY = 100  # requests between memory readings


@dataclasses.dataclass(frozen=True)
class Spec:
    """One request: the prompt as passed, the Decoder arguments, the API and, for
    sampling, the seed of the request's torch.Generator (made anew per request)."""

    prompt: torch.Tensor
    max_new_tokens: int
    stream: bool = False
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    eos_token_id: int | None = None
    seed: int = 0
    generator_device: str = "cpu"

    def serve(self, decoder) -> list[int]:
        kwargs = dict(do_sample=self.do_sample, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                      eos_token_id=self.eos_token_id)
        if self.do_sample:
            kwargs["generator"] = torch.Generator(self.generator_device).manual_seed(self.seed)
        if self.stream:
            return list(decoder.stream(self.prompt, self.max_new_tokens, **kwargs))
        return decoder.generate(self.prompt, self.max_new_tokens, **kwargs).tolist()

    def __str__(self) -> str:
        p = self.prompt
        mode = (f"sample(t={self.temperature}, top_k={self.top_k}, top_p={self.top_p}, seed={self.seed} "
                f"on {self.generator_device})" if self.do_sample else "greedy")
        return (f"{'stream' if self.stream else 'generate'} {mode} prompt {p.numel()} tokens "
                f"{tuple(p.shape)} {p.dtype} on {p.device}, max_new_tokens {self.max_new_tokens}, "
                f"eos {self.eos_token_id}")


def model():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                           intermediate_size=1024, rotary_pct=0.25, use_parallel_residual=True,
                           initializer_range=0.1)
    with torch.device("cuda"):
        return GPTNeoXForCausalLM(config).to(torch.float16).eval()


def prompt(rng: random.Random, length: int) -> torch.Tensor:
    """Random token ids in one of the layouts a caller may pass."""
    ids = torch.tensor([rng.randrange(VOCAB) for _ in range(length)])
    ids = ids.to(rng.choice([torch.long, torch.int32]), copy=True)
    ids = ids if rng.random() < 0.5 else ids.reshape(1, -1)
    return ids if rng.random() < 0.5 else ids.cuda()


def sampling(rng: random.Random) -> dict:
    return dict(do_sample=True, temperature=rng.choice([0.5, 0.8, 1.0, 1.3]), top_k=rng.choice([0, 1, 5, 50]),
                top_p=rng.choice([1.0, 0.9, 0.5]), seed=rng.randrange(2**31),
                generator_device=rng.choice(["cpu", "cuda"]))


def base_specs(rng: random.Random) -> list[Spec]:
    """The specs without eos: the two that open the soak, edge lengths, then random ones."""
    specs = [
        Spec(prompt(rng, 16), MAX_LENGTH - 16),  # greedy, fills the cache: the soak's first request
        Spec(prompt(rng, 8), 24, **sampling(rng)),  # the soak's second: its first sampling request
        Spec(prompt(rng, 1), MAX_LENGTH - 1, stream=True),
        Spec(prompt(rng, MAX_LENGTH - 1), 1, **sampling(rng)),  # the prefill alone fills the cache
        Spec(prompt(rng, 1), 1),
        Spec(prompt(rng, 40), MAX_LENGTH - 40, stream=True, **sampling(rng)),
        Spec(prompt(rng, MAX_LENGTH - 2), 2, stream=True),
    ]
    while len(specs) < SPECS - 8:  # 8 eos variants follow
        length = rng.randint(1, MAX_LENGTH - 1)
        new = MAX_LENGTH - length if rng.random() < 0.25 else rng.randint(1, MAX_LENGTH - length)
        mode = sampling(rng) if rng.random() < 0.5 else {}
        specs.append(Spec(prompt(rng, length), new, stream=rng.random() < 0.5, **mode))
    return specs


def served_fresh(decoder_class, lm, spec: Spec) -> list[int]:
    """The spec's tokens from a new Decoder serving it once."""
    with decoder_class(lm, max_length=MAX_LENGTH) as decoder:
        return spec.serve(decoder)


def with_eos(rng: random.Random, specs: list[Spec], references: list[list[int]]) -> list[tuple[Spec, list[int]]]:
    """Eos variants of specs with at least 4 tokens: the token produced half-way
    (the variant must stop right after its first occurrence), and for one spec a
    token it never produces (the variant runs to max_new_tokens)."""
    candidates = [i for i, ref in enumerate(references) if len(ref) >= 4]
    chosen = rng.sample(candidates, 8)
    variants = []
    for n, i in enumerate(chosen):
        ref = references[i]
        eos = next(t for t in range(VOCAB) if t not in ref) if n == 0 else ref[len(ref) // 2]
        expected = ref if eos not in ref else ref[: ref.index(eos) + 1]
        variants.append((dataclasses.replace(specs[i], eos_token_id=eos), expected))
    return variants


def memory() -> int:
    gc.collect()
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="requests the soak Decoder serves (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("soak: no CUDA GPU", file=sys.stderr)
        return 2
    if args.requests < 2 * EVERY:
        parser.error(f"--requests must be at least {2 * EVERY} (memory is compared after every {EVERY})")
    from clusterfusion import Decoder

    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    lm = model()
    with Decoder(lm, max_length=MAX_LENGTH) as probe:
        print(f"soak on {torch.cuda.get_device_name()}: fused layers {list(probe.served_layers)} of "
              f"{lm.config.num_hidden_layers}; references from a fresh Decoder per spec", flush=True)

    specs = base_specs(rng)
    references = [served_fresh(Decoder, lm, spec) for spec in specs]
    failures = []
    for spec, expected in with_eos(rng, specs, references):
        got = served_fresh(Decoder, lm, spec)
        if got != expected:
            failures.append(f"reference of eos spec [{spec}]: {got} != the spec without eos cut after eos {expected}")
        specs.append(spec)
        references.append(got)

    rest = [i for i in range(len(specs)) for _ in range(-(-args.requests // len(specs)))]
    rng.shuffle(rest)
    order = [0, 1] + rest[: args.requests - 2]  # greedy filling the cache, then the first sampling request
    decoder = Decoder(lm, max_length=MAX_LENGTH)
    series = []
    for n, i in enumerate(order, start=1):
        try:
            got = specs[i].serve(decoder)
        except Exception:
            print(f"soak: request {n} (spec {i}: {specs[i]}) raised", file=sys.stderr)
            raise
        if got != references[i]:
            first = next((k for k, (a, b) in enumerate(zip(got, references[i])) if a != b), min(len(got), len(references[i])))
            failures.append(f"request {n} (spec {i}: {specs[i]}): {len(got)} tokens, first difference at "
                            f"token {first}: {got[first:first + 4]} != reference {references[i][first:first + 4]}")
        if n % EVERY == 0:
            series.append(memory())
            print(f"soak: {n}/{len(order)} requests, {len(failures)} mismatches, memory_allocated {series[-1]} B",
                  flush=True)
    decoder.close()

    for failure in failures[:20]:
        print("MISMATCH", failure)
    grew = [m for m in series[1:] if m > series[0]]
    print(f"soak: memory_allocated after every {EVERY} requests (bytes): {series}"
          + (f"; GREW above {series[0]}" if grew else "; no growth"))
    ok = not failures and not grew
    print(f"soak: {len(order)} requests over {len(specs)} distinct specs, {len(failures)} mismatches, "
          f"memory {'grew' if grew else 'steady'}: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
