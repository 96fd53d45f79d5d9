"""Batch-1 generation for HuggingFace GPT-NeoX causal LMs: eager prefill, then one
decode step captured in a CUDA graph over a static cache and replayed per token.

    decoder = clusterfusion.Decoder(model)               # model: GPTNeoXForCausalLM, eval mode
    tokens = decoder.generate(input_ids, max_new_tokens=64)
    for token in decoder.stream(input_ids, max_new_tokens=64, do_sample=True, top_p=0.9):
        print(token)

Needs ``transformers`` (imported when a Decoder is made).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import torch

from ._fusions import parse_fusions
from ._sampling import splitmix64_uniform

__all__ = ["Decoder"]


class _Sampling:
    """Device-side sampling settings, so one captured step serves every request, and
    one uniform per position of the request, drawn when the request starts: the
    step reads its token's uniform by index, with no generator state in the graph."""

    def __init__(self, device, max_length: int):
        self.temperature = torch.ones(1, device=device)
        self.top_k = torch.zeros(1, dtype=torch.long, device=device)
        self.top_p = torch.ones(1, device=device)
        self.uniforms = torch.full((max_length,), 0.5, device=device)
        self._positions = torch.arange(max_length, device=device)

    def set(self, temperature: float, top_k: int, top_p: float, seed: int) -> None:
        self.temperature.fill_(temperature)
        self.top_k.fill_(top_k)
        self.top_p.fill_(top_p)
        self.uniforms.copy_(splitmix64_uniform(self._positions + seed))


def _greedy(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1, keepdim=True)


def _sample(logits: torch.Tensor, sampling: _Sampling, index: torch.Tensor) -> torch.Tensor:
    """Temperature, top-k (0: off) and top-p, then the draw at the token's uniform,
    in one kernel (see :func:`clusterfusion.sample_tokens`): no host
    synchronization, reproducible from the seed."""
    uniform = sampling.uniforms.index_select(0, index)
    tokens = torch.ops.clusterfusion.sample_tokens(logits, uniform, sampling.temperature, sampling.top_k, sampling.top_p)
    return tokens.view(-1, 1)


class _Request(NamedTuple):
    """One request's arguments, checked."""

    prompt: torch.Tensor  # [1, length] on the Decoder's device
    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    eos_token_id: int | None = None
    generator: torch.Generator | None = None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Decoder:
    """Fast batch-1 generation for a HuggingFace GPT-NeoX causal LM.

    The Decoder owns a ``StaticCache`` of ``max_length`` positions and, on CUDA,
    one decode step captured in a CUDA graph per token-selection mode (greedy,
    sampling), captured on first use and reused for every request and prompt
    length. Each request prefills its prompt eagerly (in chunks), then replays
    the captured step once per token; greedy choice and sampling (temperature,
    top-k, top-p) run on the device inside the step. Tokens are read back in
    chunks (all at once for :meth:`generate` without ``eos_token_id``).

    On the CPU the same step runs without a graph.

    Args:
        model: a ``GPTNeoXForCausalLM`` on one device, in eval mode.
        max_length: prompt plus new tokens, the static cache's length.
        fusions: which clusterfusion fusions serve the captured step:
            ``"auto"`` (all: ``("attention_block", "mlp_block_residual",
            "mlp_down_residual")``; the attention block serves the captured
            decode step), a selection (see :func:`clusterfusion.hf.patch_model`,
            which also takes the former names ``"mlp_block"`` and
            ``"mlp_down"``), or ``None``
            for HuggingFace's own kernels. The model is patched only
            while the Decoder prefills and captures; outside its calls it is
            unchanged.
        compile: run the step through ``torch.compile(model.forward)`` (compiled
            when it is captured, tens of seconds for a large model).

    Raises:
        TypeError: ``model`` is not a GPT-NeoX causal LM.
        ValueError: ``max_length`` or ``fusions`` out of range, or the model in training mode.
    """

    _CHUNK = 16  # tokens read back at a time when streaming or watching for EOS
    _PREFILL_CHUNK = 512  # prompt tokens per eager prefill forward

    def __init__(self, model: torch.nn.Module, max_length: int = 2048, fusions="auto", compile: bool = False):
        from transformers import GPTNeoXForCausalLM, StaticCache

        if not isinstance(model, GPTNeoXForCausalLM):
            raise TypeError(
                f"clusterfusion.Decoder: argument 'model' must be a transformers GPTNeoXForCausalLM; got {type(model).__name__}"
            )
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"clusterfusion.Decoder: argument 'max_length' must be an int >= 2; got {max_length!r}")
        if model.training:
            raise ValueError("clusterfusion.Decoder: the model is in training mode; call model.eval() first")
        self.model = model
        self.max_length = max_length
        self.fusions = parse_fusions(fusions, "clusterfusion.Decoder")
        self.device = next(model.parameters()).device
        self._graphs_enabled = self.device.type == "cuda"
        self._forward = torch.compile(model.forward) if compile else model.forward
        self.cache = StaticCache(config=model.config, max_cache_len=max_length)
        self._token = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self._history = torch.zeros(max_length, dtype=torch.long, device=self.device)
        self._count = torch.zeros(1, dtype=torch.long, device=self.device)  # tokens produced this request
        self._sampling = _Sampling(self.device, max_length)
        self._graphs: dict[bool, torch.cuda.CUDAGraph] = {}
        self._graph_logits: dict[bool, torch.Tensor] = {}  # each captured step's logits
        self._pool = None
        self._requests = 0  # requests started; a stream checks it to know its tokens are still the history's
        #: Indices of the layers the fused ops serve (empty with ``fusions=None``); with
        #: ``fusions``, a :class:`clusterfusion.hf.PatchReport` that also says which fusion serves which.
        self.served_layers: list[int] = []
        if self.fusions:
            from .hf import patched

            with patched(model, self.fusions) as served:  # says once which layers it cannot serve, and why
                self.served_layers = served

    # ---- the step ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _patched(self):
        if not self.fusions:
            yield
            return
        import warnings

        from .hf import patched

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # said once, when the Decoder was made
            with patched(self.model, self.fusions):
                yield

    def _choose(self, logits: torch.Tensor, sample: bool) -> None:
        token = _sample(logits, self._sampling, self._count) if sample else _greedy(logits)
        # The history keeps the sampler's -1 (no token: the logits held a NaN or no
        # finite value), which the read-back reports; the next step is fed a valid id.
        torch.clamp(token, min=0, out=self._token)
        self._history.index_copy_(0, self._count, token[0])
        self._count.add_(1)

    def _step(self, sample: bool) -> torch.Tensor:
        logits = self._forward(self._token, past_key_values=self.cache, use_cache=True).logits[:, -1]
        self._choose(logits, sample)
        return logits

    def _graph(self, sample: bool) -> torch.cuda.CUDAGraph:
        graph = self._graphs.get(sample)
        if graph is not None:
            return graph
        # Warm up off the capture (lazy initialisation, compilation), then capture.
        # The warm-up writes the cache and the history from position 0 (not where
        # the last request left the cache, which may be full); the prefill that
        # follows resets both.
        self.cache.reset()
        self._count.zero_()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with self._patched(), torch.no_grad():
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._step(sample)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                self._graph_logits[sample] = self._step(sample)
        self._pool = graph.pool()
        self._graphs[sample] = graph
        return graph

    def _prefill(self, prompt: torch.Tensor, sample: bool) -> torch.Tensor:
        self.cache.reset()
        self._count.zero_()
        with self._patched(), torch.no_grad():
            for start in range(0, prompt.shape[1], self._PREFILL_CHUNK):
                chunk = prompt[:, start : start + self._PREFILL_CHUNK]
                logits = self.model(chunk, past_key_values=self.cache, use_cache=True).logits[:, -1]
            self._choose(logits, sample)
        return logits

    # ---- requests ---------------------------------------------------------------------

    def _check(self, input_ids, max_new_tokens, do_sample=False, temperature=1.0, top_k=0, top_p=1.0,
               eos_token_id=None, generator=None) -> _Request:
        name = "clusterfusion.Decoder"
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int):
            raise TypeError(f"{name}: argument 'input_ids' must be an integer tensor; got {input_ids!r:.80}")
        prompt = input_ids.reshape(1, -1) if input_ids.dim() == 1 else input_ids
        if prompt.dim() != 2 or prompt.shape[0] != 1:
            raise ValueError(f"{name}: batch 1 only: 'input_ids' must be [length] or [1, length]; got {tuple(input_ids.shape)}")
        if prompt.shape[1] == 0:
            raise ValueError(f"{name}: argument 'input_ids' is empty")
        vocab = self.model.config.vocab_size
        low, high = int(prompt.min()), int(prompt.max())
        if low < 0 or high >= vocab:
            raise ValueError(
                f"{name}: argument 'input_ids' holds token {low if low < 0 else high}; expected ids in [0, {vocab}) "
                "(the model's vocab_size)"
            )
        if not _is_int(max_new_tokens):
            raise TypeError(f"{name}: argument 'max_new_tokens' must be an int; got {max_new_tokens!r}")
        if max_new_tokens < 1:
            raise ValueError(f"{name}: argument 'max_new_tokens' must be an int >= 1; got {max_new_tokens!r}")
        if prompt.shape[1] + max_new_tokens > self.max_length:
            raise ValueError(
                f"{name}: the prompt ({prompt.shape[1]} tokens) plus max_new_tokens ({max_new_tokens}) exceeds "
                f"max_length={self.max_length}; make the Decoder with a larger max_length"
            )
        if do_sample:
            for arg, value, fits, kind in (("temperature", temperature, _is_number, "a number"),
                                           ("top_k", top_k, _is_int, "an int"), ("top_p", top_p, _is_number, "a number")):
                if not fits(value):
                    raise TypeError(f"{name}: argument '{arg}' must be {kind}; got {value!r}")
            if not temperature > 0:
                raise ValueError(f"{name}: argument 'temperature' must be > 0; got {temperature!r}")
            if top_k < 0:
                raise ValueError(f"{name}: argument 'top_k' must be an int >= 0 (0: off); got {top_k!r}")
            if not 0 < top_p <= 1:
                raise ValueError(f"{name}: argument 'top_p' must be in (0, 1]; got {top_p!r}")
        if eos_token_id is not None and not isinstance(eos_token_id, int):
            raise TypeError(f"{name}: argument 'eos_token_id' must be an int or None; got {eos_token_id!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"{name}: argument 'generator' must be a torch.Generator or None; got {generator!r}")
        return _Request(prompt.to(self.device, torch.long), max_new_tokens, do_sample, temperature, top_k, top_p,
                        eos_token_id, generator)

    def _start(self, r: _Request) -> torch.Tensor:
        """Sets the request's sampling, captures its step if needed, prefills; returns the prefill's logits."""
        if self.cache is None:
            raise RuntimeError("clusterfusion.Decoder: this Decoder was closed")
        self._requests += 1
        if r.do_sample:
            device = r.generator.device if r.generator is not None else "cpu"
            seed = int(torch.randint(2**62, (1,), generator=r.generator, device=device))
            self._sampling.set(r.temperature, r.top_k, r.top_p, seed)
        if self._graphs_enabled:
            self._graph(r.do_sample)  # before the prefill: its warm-up writes the cache
        return self._prefill(r.prompt, r.do_sample)

    def _advance(self, steps: int, sample: bool) -> None:
        if self._graphs_enabled:
            graph = self._graphs[sample]
            for _ in range(steps):
                graph.replay()
        else:
            with self._patched(), torch.no_grad():
                for _ in range(steps):
                    self._step(sample)

    def stream(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[int]:
        """Yields the new tokens as they are produced, read back 16 at a time; stops
        after ``eos_token_id`` (which is yielded) or ``max_new_tokens``.

        Arguments as :meth:`generate`. The Decoder serves one request at a time:
        starting another request ends an unfinished stream.
        """
        request = self._check(input_ids, max_new_tokens, do_sample, temperature, top_k, top_p, eos_token_id, generator)
        return self._tokens(request, self._CHUNK)

    def _tokens(self, r: _Request, chunk: int) -> Iterator[int]:
        self._start(r)
        mine = self._requests
        produced, yielded = 1, 0  # the prefill produced the first token
        while yielded < r.max_new_tokens:
            target = min(r.max_new_tokens, yielded + chunk)
            if self._requests != mine:
                raise RuntimeError("clusterfusion.Decoder: another request started while this stream was unfinished")
            self._advance(target - produced, r.do_sample)
            produced = target
            for index, token in enumerate(self._history[yielded:target].tolist(), start=yielded):
                if token < 0:
                    raise RuntimeError(
                        f"clusterfusion.Decoder: no token could be sampled for new token {index}: the logits held a "
                        "NaN or +inf, or no finite value (clusterfusion.sample_tokens returned -1)"
                    )
                yield token
                if token == r.eos_token_id:
                    return
            yielded = target

    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Generates up to ``max_new_tokens`` tokens after ``input_ids``.

        Args:
            input_ids: the prompt, ``[length]`` or ``[1, length]`` (batch 1), on any device.
            max_new_tokens: at most this many new tokens; prompt plus these must fit ``max_length``.
            do_sample: sample instead of choosing the most likely token.
            temperature, top_k, top_p: sampling settings (``top_k=0``: no top-k cut).
            eos_token_id: stop after this token (it is returned).
            generator: a seeded ``torch.Generator`` (any device) makes sampling
                reproducible; one seed is drawn from it (or from torch's default
                generator) per request, and the same seed gives the same tokens
                on every run.

        Returns:
            The new tokens, a 1-D ``torch.long`` tensor on the CPU.

        Raises:
            ValueError / TypeError: bad arguments, with the argument named.
        """
        request = self._check(input_ids, max_new_tokens, do_sample, temperature, top_k, top_p, eos_token_id, generator)
        chunk = self._CHUNK if eos_token_id is not None else max_new_tokens
        return torch.tensor(list(self._tokens(request, chunk)), dtype=torch.long)

    @torch.no_grad()
    def teacher_forced_logits(self, input_ids: torch.Tensor, continuation) -> torch.Tensor:
        """The next-token logits after the prompt and after each token of
        ``continuation`` but the last, each fed regardless of what the model would
        choose, through the same captured step as :meth:`generate`:
        ``[len(continuation), vocab]`` in float32 (for fidelity checks)."""
        continuation = [int(t) for t in continuation]
        out = [self._start(self._check(input_ids, max(len(continuation), 1))).float()]
        for token in continuation[:-1]:
            self._token.fill_(token)
            if self._graphs_enabled:
                self._graphs[False].replay()
                out.append(self._graph_logits[False].float())
            else:
                with self._patched():
                    out.append(self._step(False).float())
        return torch.cat(out)

    def close(self) -> None:
        """Releases the captured steps and the cache; the Decoder cannot serve afterwards.
        Dropping the last reference to a Decoder releases them too."""
        self._graphs.clear()
        self._graph_logits.clear()
        self._pool = None
        self.cache = None

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
