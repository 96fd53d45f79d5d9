"""Generate text with a local GPT-NeoX (Pythia) checkpoint through :class:`clusterfusion.Decoder`.

Usage::

    python -m clusterfusion.generate --model DIR --prompt "..." [--max-new-tokens N]
        [--temperature T] [--top-k K] [--top-p P] [--seed S]
        [--fusions auto|none|NAME,NAME] [--max-length L] [--dtype auto|fp16|bf16|fp32] [--compare]

``DIR`` is a folder saved by ``save_pretrained`` (``config.json``, the weights and
the tokenizer's files); nothing is downloaded. The model runs on the GPU when
there is one (fp16 unless ``--dtype`` says otherwise), else on the CPU in fp32.

The new text is streamed to stdout as it is produced (the prompt is not repeated);
the figures go to stderr: tokens generated, tokens/s and ms/token (prompt prefill
included, model loading and a one-token warm-up that captures the CUDA graph
excluded), the device, the fusions and the layers their fused ops serve.

Decoding is greedy unless ``--temperature``, ``--top-k`` or ``--top-p`` is given;
then it samples, reproducibly with ``--seed`` (without one a random seed is drawn
and printed). ``--compare`` also runs HuggingFace's ``model.generate`` with the
same settings, prints its text and both ms/token figures. HuggingFace samples with
its own random numbers, so sampled texts differ between the two; greedy ones
match (up to rounding ties).

Exit status: 0 on success, 2 for a bad argument or checkpoint folder, 1 for a
failure while loading or generating (one line on stderr each).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import NamedTuple, TextIO

import torch

from . import Decoder
from ._fusions import FUSIONS, parse_fusions

__all__ = ["Sampling", "Generation", "generate_text", "huggingface_generate", "main"]

PROG = "python -m clusterfusion.generate"
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# Files any of which holds a tokenizer's vocabulary (tokenizers' JSON, BPE, SentencePiece, WordPiece).
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt")


class CommandError(Exception):
    """A failure the command reports as one line on stderr, with exit status 1."""


class Sampling(NamedTuple):
    """How each token is chosen: greedy when ``do_sample`` is false (the rest is then unused)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0
    seed: int = 0


class Generation(NamedTuple):
    """One generated continuation and the time it took."""

    ids: list[int]  # the new tokens, without the prompt
    text: str  # their decoded text, special tokens skipped
    seconds: float  # wall time of the generation (prefill included)

    @property
    def ms_per_token(self) -> float:
        """Milliseconds per new token."""
        return 1000.0 * self.seconds / max(len(self.ids), 1)

    @property
    def tokens_per_second(self) -> float:
        """New tokens per second."""
        return len(self.ids) / self.seconds if self.seconds > 0 else float("inf")


def _synchronize(device: torch.device) -> None:
    """Waits for the device's queued work, so a host timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _decoder_sampling(sampling: Sampling, device: torch.device) -> dict:
    """The Decoder's keyword arguments for ``sampling``, with a generator seeded afresh
    (so the same seed gives the same tokens on every call)."""
    if not sampling.do_sample:
        return {}
    generator = torch.Generator(device=device).manual_seed(sampling.seed)
    return dict(do_sample=True, temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                generator=generator)


def _huggingface_sampling(sampling: Sampling) -> dict:
    """HuggingFace ``generate``'s keyword arguments for ``sampling`` (its ``top_k=0`` is no cut too)."""
    if not sampling.do_sample:
        return dict(do_sample=False)
    return dict(do_sample=True, temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)


def _warm_up(decoder: Decoder, prompt_ids: torch.Tensor, sampling: Sampling) -> None:
    """A one-token request with ``sampling``'s settings: the Decoder checks them
    (raising ValueError / TypeError naming the bad one) and, on CUDA, captures the
    decode step, so a timed generation afterwards counts neither."""
    decoder.generate(prompt_ids, 1, **_decoder_sampling(sampling, decoder.device))


def generate_text(
    decoder: Decoder,
    tokenizer,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    eos_token_id: int | None = None,
    out: TextIO | None = None,
) -> Generation:
    """Generates after ``prompt_ids`` ([1, length]) with ``decoder``, writing the text
    to ``out`` (if given) as it is produced.

    The new tokens are decoded together each time one arrives and only the new end
    of the text is written, so tokens that make one character or merge with their
    neighbours print as the whole text reads; text ending in an incomplete
    character waits for the next token.
    """
    ids: list[int] = []
    written = ""
    _synchronize(decoder.device)
    start = time.perf_counter()
    for token in decoder.stream(prompt_ids, max_new_tokens, eos_token_id=eos_token_id,
                                **_decoder_sampling(sampling, decoder.device)):
        ids.append(token)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if out is not None and not text.endswith("\ufffd"):
            out.write(text[len(written):])
            out.flush()
            written = text
    _synchronize(decoder.device)
    seconds = time.perf_counter() - start
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if out is not None:
        out.write(text[len(written):])
        out.flush()
    return Generation(ids, text, seconds)


def huggingface_generate(
    model,
    tokenizer,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    eos_token_id: int | None = None,
) -> Generation:
    """HuggingFace's own ``model.generate`` with the same settings, timed as
    :func:`generate_text` (sampling seeds torch's global generators with ``sampling.seed``)."""
    device = prompt_ids.device
    if sampling.do_sample:
        torch.manual_seed(sampling.seed)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_token_id
    _synchronize(device)
    start = time.perf_counter()
    output = model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=max_new_tokens,
                            eos_token_id=eos_token_id, pad_token_id=pad_token_id, **_huggingface_sampling(sampling))
    _synchronize(device)
    seconds = time.perf_counter() - start
    ids = output[0, prompt_ids.shape[1]:].tolist()
    return Generation(ids, tokenizer.decode(ids, skip_special_tokens=True), seconds)


# ---- the command ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Generate text with a local GPT-NeoX (Pythia) checkpoint through clusterfusion.Decoder. "
        "The new text goes to stdout as it is produced; the figures go to stderr.",
    )
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="a checkpoint folder saved by save_pretrained (config.json, weights, tokenizer files)")
    parser.add_argument("--prompt", required=True, help="the text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=64, metavar="N",
                        help="generate at most N tokens (default: %(default)s); stops earlier at the end-of-text token")
    sampling = parser.add_argument_group("sampling (greedy unless one of --temperature, --top-k, --top-p is given)")
    sampling.add_argument("--temperature", type=float, metavar="T", help="divide the logits by T > 0 (default 1)")
    sampling.add_argument("--top-k", type=int, metavar="K", help="keep the K most likely tokens (0: all; default 0)")
    sampling.add_argument("--top-p", type=float, metavar="P",
                          help="keep the most likely tokens up to probability P in (0, 1] (default 1)")
    sampling.add_argument("--seed", type=int, metavar="S",
                          help="seed of the draws, for the same text on every run (default: a random seed, printed)")
    parser.add_argument("--fusions", default="auto", metavar="auto|none|NAME,NAME",
                        help="the clusterfusion fusions: auto (all), none (HuggingFace's kernels) or a "
                        f"comma-separated selection of {', '.join(FUSIONS)} (default: %(default)s)")
    parser.add_argument("--max-length", type=int, metavar="L",
                        help="the Decoder's cache length (default: prompt tokens + N, at least 2)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the model runs (default auto: the GPU if there is one, else the CPU)")
    parser.add_argument("--dtype", choices=("auto", *_DTYPES), default="auto",
                        help="weights' dtype (default auto: fp16 on a GPU, fp32 on the CPU)")
    parser.add_argument("--compare", action="store_true",
                        help="also run HuggingFace's model.generate with the same settings; print its text, "
                        "both ms/token figures and the speedup")
    return parser


def _check_checkpoint(parser: argparse.ArgumentParser, folder: Path) -> None:
    """Exits through ``parser.error`` unless ``folder`` holds a GPT-NeoX config and a tokenizer."""
    if not folder.is_dir():
        parser.error(f"--model {folder}: no such directory")
    config_file = folder / "config.json"
    if not config_file.is_file():
        parser.error(f"--model {folder}: no config.json in it; expected a folder saved by save_pretrained")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as error:
        parser.error(f"--model {folder}: config.json is not a readable JSON object: {error}")
    if model_type != "gpt_neox":
        parser.error(f"--model {folder}: a {model_type or 'model without a model_type'!s} model; "
                     "clusterfusion serves GPT-NeoX (Pythia) models only (model_type 'gpt_neox')")
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        parser.error(f"--model {folder}: no tokenizer in it (none of {', '.join(_TOKENIZER_FILES)}); "
                     "save the tokenizer to the same folder with tokenizer.save_pretrained")


def _sampling(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Sampling:
    """The sampling settings the arguments ask for (any of them asks for sampling)."""
    do_sample = any(value is not None for value in (args.temperature, args.top_k, args.top_p))
    if not do_sample:
        if args.seed is not None:
            parser.error("--seed applies to sampling: give --temperature, --top-k or --top-p too")
        return Sampling()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    return Sampling(True, 1.0 if args.temperature is None else args.temperature,
                    0 if args.top_k is None else args.top_k, 1.0 if args.top_p is None else args.top_p, seed)


def _fusions(text: str):
    """``--fusions`` as the Decoder takes it (which checks the names)."""
    lowered = text.strip().lower()
    if lowered == "none":
        return None
    if lowered == "auto":
        return "auto"
    return [name.strip() for name in text.split(",")]


def _one_line(error: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(error).split()) or type(error).__name__


def _load(folder: Path, dtype_name: str, device_name: str):
    """The tokenizer and the model on `device_name` ("auto": the GPU if there is one);
    says on stderr what it does."""
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    print(f"loading {folder} ...", file=sys.stderr, flush=True)
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    dtype = _DTYPES[dtype_name] if dtype_name != "auto" else torch.float16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        why = "no CUDA GPU" if not torch.cuda.is_available() else "--device cpu"
        print(f"{why}: running on the CPU in {str(dtype).removeprefix('torch.')}, slowly", file=sys.stderr, flush=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError) as error:
        raise CommandError(f"could not load the tokenizer from {folder}: {_one_line(error)}") from error
    try:
        model = GPTNeoXForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype)
    except (OSError, ValueError, TypeError, RuntimeError) as error:
        raise CommandError(f"could not load the model from {folder}: {_one_line(error)}") from error
    return tokenizer, model.to(device).eval()


def _eos_token_id(tokenizer, config) -> int | None:
    """The end-of-text token the tokenizer names, else the model's config, else None."""
    for candidate in (tokenizer.eos_token_id, config.eos_token_id):
        if isinstance(candidate, int):
            return candidate
    return None


def _describe_fusions(decoder: Decoder) -> str:
    """The Decoder's fusions and the layers each serves, on one line."""
    if not decoder.fusions:
        return "fusions: none (HuggingFace's kernels)"
    by_fusion = getattr(decoder.served_layers, "by_fusion", {})
    served = "; ".join(f"{name}: layers {_layers(by_fusion.get(name, []))}" for name in decoder.fusions)
    return f"fusions: {', '.join(decoder.fusions)}; fused ops serve layers {_layers(decoder.served_layers)} ({served})"


def _layers(indices) -> str:
    """Layer indices as a list for people."""
    return ", ".join(map(str, indices)) if indices else "none"


def _figures(label: str, generation: Generation) -> str:
    """A generation's length and speed, on one line."""
    return (f"{label}: {len(generation.ids)} tokens in {generation.seconds:.3f} s, "
            f"{generation.tokens_per_second:.1f} tokens/s, {generation.ms_per_token:.2f} ms/token")


def _agreement(ours: Generation, theirs: Generation, sampling: Sampling) -> str:
    """Whether two generations made the same tokens, else where they part."""
    if ours.ids == theirs.ids:
        return "the two generated the same tokens"
    shorter = min(len(ours.ids), len(theirs.ids))
    first = next((i for i, (a, b) in enumerate(zip(ours.ids, theirs.ids)) if a != b), shorter)
    why = " (each samples with its own random numbers)" if sampling.do_sample else ""
    return f"the tokens differ from new token {first}{why}"


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Checks the arguments, loads, generates and reports; raises CommandError or exits through the parser."""
    folder = Path(args.model)
    _check_checkpoint(parser, folder)
    if not args.prompt:
        parser.error("--prompt is empty")
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be >= 1; got {args.max_new_tokens}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available")
    sampling = _sampling(parser, args)
    fusions = _fusions(args.fusions)
    try:
        parse_fusions(fusions, PROG)  # the Decoder's check, before the (long) load
    except ValueError:
        parser.error(f"--fusions must be auto, none or a comma-separated selection of {', '.join(FUSIONS)}; "
                     f"got {args.fusions!r}")

    tokenizer, model = _load(folder, args.dtype, args.device)
    device = next(model.parameters()).device
    prompt_ids = tokenizer(args.prompt, return_tensors="pt").input_ids.to(device)
    prompt_length = prompt_ids.shape[1]
    if prompt_length == 0:
        raise CommandError(f"the prompt {args.prompt!r} has no tokens")
    if args.max_length is not None and args.max_length < prompt_length + args.max_new_tokens:
        raise CommandError(f"--max-length {args.max_length} is less than the prompt's length ({prompt_length} "
                           f"tokens) plus --max-new-tokens ({args.max_new_tokens})")
    max_length = args.max_length if args.max_length is not None else max(prompt_length + args.max_new_tokens, 2)
    eos_token_id = _eos_token_id(tokenizer, model.config)
    try:
        decoder = Decoder(model, max_length=max_length, fusions=fusions)
        _warm_up(decoder, prompt_ids, sampling)
    except (ValueError, TypeError) as error:
        raise CommandError(_one_line(error)) from error

    try:
        generation = generate_text(decoder, tokenizer, prompt_ids, args.max_new_tokens, sampling, eos_token_id,
                                   out=sys.stdout)
    except RuntimeError as error:  # e.g. logits the sampler cannot draw from
        raise CommandError(_one_line(error)) from error
    print(flush=True)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    mode = f"sampling, seed {sampling.seed}" if sampling.do_sample else "greedy"
    print(f"{_figures('clusterfusion', generation)} ({prompt_length} prompt tokens, {mode}, "
          f"{str(model.dtype).removeprefix('torch.')} on {device_name})", file=sys.stderr)
    print(_describe_fusions(decoder), file=sys.stderr, flush=True)
    if not args.compare:
        return

    decoder.close()  # frees its cache before HuggingFace allocates its own
    huggingface_generate(model, tokenizer, prompt_ids, 1, sampling, eos_token_id)  # warm-up
    reference = huggingface_generate(model, tokenizer, prompt_ids, args.max_new_tokens, sampling, eos_token_id)
    print("--- HuggingFace generate ---", flush=True)
    print(reference.text, flush=True)
    print(_figures("HuggingFace generate", reference), file=sys.stderr)
    print(f"clusterfusion {generation.ms_per_token:.2f} ms/token vs HuggingFace "
          f"{reference.ms_per_token:.2f} ms/token: speedup {reference.ms_per_token / generation.ms_per_token:.2f}x; "
          f"{_agreement(generation, reference, sampling)}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Runs the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.
    Argument errors exit through ``SystemExit(2)``, as argparse does."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _run(args, parser)
    except CommandError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
