"""clusterfusion.Decoder: what it generates equals HuggingFace's generate, on the CPU
(the same step without a graph) and on the GPU (the captured step)."""

from __future__ import annotations

import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from clusterfusion import Decoder  # noqa: E402
from clusterfusion.hf import is_patched  # noqa: E402
from conftest import gpt_neox_model as _model, gpu, rel_err  # noqa: E402




def _prompt(length, device="cpu"):
    return torch.randint(0, 128, (1, length), device=device)


@torch.no_grad()
def _hf_greedy(model, prompt, new_tokens):
    out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return out[0, prompt.shape[1] :].cpu()


@pytest.mark.parametrize("fusions", [None, "auto"])
def test_greedy_equals_huggingface_generate_on_cpu(fusions):
    model = _model()
    decoder = Decoder(model, max_length=64, fusions=fusions)
    for length in (5, 17, 1):  # requests of different prompt lengths, back to back
        prompt = _prompt(length)
        assert torch.equal(decoder.generate(prompt, max_new_tokens=20), _hf_greedy(model, prompt, 20))
    assert not any(is_patched(layer) for layer in model.gpt_neox.layers)  # patched only inside its calls
    assert decoder.served_layers == ([] if fusions is None else [0, 1, 2])


def test_long_prompt_is_prefilled_in_chunks(monkeypatch):
    model = _model()
    decoder = Decoder(model, max_length=100)
    monkeypatch.setattr(Decoder, "_PREFILL_CHUNK", 16)
    prompt = _prompt(70)
    assert torch.equal(decoder.generate(prompt[0], max_new_tokens=8), _hf_greedy(model, prompt, 8))


def test_top_k_1_is_greedy_and_sampling_repeats_with_a_seed():
    decoder = Decoder(_model(), max_length=64)
    prompt = _prompt(6)
    greedy = decoder.generate(prompt, max_new_tokens=24)
    top1 = decoder.generate(prompt, max_new_tokens=24, do_sample=True, top_k=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(top1, greedy)
    first = decoder.generate(prompt, 24, do_sample=True, temperature=1.5, generator=torch.Generator().manual_seed(7))
    again = decoder.generate(prompt, 24, do_sample=True, temperature=1.5, generator=torch.Generator().manual_seed(7))
    other = decoder.generate(prompt, 24, do_sample=True, temperature=1.5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first, greedy)


def test_uniforms_are_uniform():
    from clusterfusion._sampling import splitmix64_uniform

    u = splitmix64_uniform(torch.arange(200_000, dtype=torch.long) * 7919 + 3)
    assert 0 < u.min() and u.max() < 1
    histogram = torch.histc(u, bins=20, min=0, max=1) / u.numel()
    assert (histogram - 0.05).abs().max() < 0.003
    assert abs(float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])) < 0.01


def test_stream_yields_what_generate_returns_and_eos_stops():
    decoder = Decoder(_model(), max_length=64)
    prompt = _prompt(4)
    tokens = decoder.generate(prompt, max_new_tokens=40)
    assert list(decoder.stream(prompt, max_new_tokens=40)) == tokens.tolist()
    eos = tokens[21].item()
    stop = tokens.tolist().index(eos)
    assert decoder.generate(prompt, 40, eos_token_id=eos).tolist() == tokens[: stop + 1].tolist()
    assert list(decoder.stream(prompt, 40, eos_token_id=eos)) == tokens[: stop + 1].tolist()


def test_a_new_request_ends_an_unfinished_stream():
    decoder = Decoder(_model(), max_length=64)
    stream = decoder.stream(_prompt(4), max_new_tokens=40)
    next(stream)
    decoder.generate(_prompt(3), max_new_tokens=4)
    with pytest.raises(RuntimeError, match="another request started"):
        list(stream)


def test_teacher_forced_logits_match_huggingface():
    model = _model()
    prompt = _prompt(5)
    continuation = torch.randint(0, 128, (9,)).tolist()
    with torch.no_grad():
        expected = model(torch.cat([prompt, torch.tensor([continuation[:-1]])], 1)).logits[0, 4:]
    got = Decoder(model, max_length=32).teacher_forced_logits(prompt, continuation)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs,exc,words",
    [
        (dict(input_ids=torch.zeros(2, 3, dtype=torch.long)), ValueError, "batch 1 only"),
        (dict(input_ids=torch.zeros(1, 0, dtype=torch.long)), ValueError, "'input_ids' is empty"),
        (dict(input_ids=torch.zeros(1, 3)), TypeError, "'input_ids' must be an integer tensor"),
        (dict(input_ids=torch.tensor([[1, 128, 2]])), ValueError, r"'input_ids' holds token 128; expected ids in \[0, 128\)"),
        (dict(input_ids=torch.tensor([[1, -1, 2]])), ValueError, r"'input_ids' holds token -1; expected ids in \[0, 128\)"),
        (dict(max_new_tokens=0), ValueError, "'max_new_tokens' must be an int >= 1; got 0"),
        (dict(max_new_tokens=4.0), TypeError, "'max_new_tokens' must be an int; got 4.0"),
        (dict(max_new_tokens=True), TypeError, "'max_new_tokens' must be an int; got True"),
        (dict(do_sample=True, temperature="hot"), TypeError, "'temperature' must be a number; got 'hot'"),
        (dict(do_sample=True, top_k=2.5), TypeError, "'top_k' must be an int; got 2.5"),
        (dict(do_sample=True, top_p=None), TypeError, "'top_p' must be a number; got None"),
        (dict(max_new_tokens=30), ValueError, r"prompt \(3 tokens\) plus max_new_tokens \(30\) exceeds max_length=32"),
        (dict(do_sample=True, temperature=0.0), ValueError, "'temperature' must be > 0"),
        (dict(do_sample=True, top_k=-1), ValueError, "'top_k' must be an int >= 0"),
        (dict(do_sample=True, top_p=0.0), ValueError, r"'top_p' must be in \(0, 1\]"),
        (dict(eos_token_id="2"), TypeError, "'eos_token_id' must be an int"),
        (dict(do_sample=True, generator=1), TypeError, "'generator' must be a torch.Generator"),
    ],
)
def test_bad_arguments(kwargs, exc, words):
    decoder = Decoder(_model(), max_length=32)
    call = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "max_new_tokens": 4, **kwargs}
    with pytest.raises(exc, match=words):
        decoder.generate(**call)


def test_bad_construction():
    with pytest.raises(TypeError, match="must be a transformers GPTNeoXForCausalLM; got Linear"):
        Decoder(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="'max_length' must be an int >= 2"):
        Decoder(_model(), max_length=1)
    with pytest.raises(ValueError, match="'fusions' must be None, \"auto\" or a selection"):
        Decoder(_model(), fusions=("attention",))
    with pytest.raises(ValueError, match="training mode"):
        Decoder(_model().train())
    decoder = Decoder(_model(), max_length=16)
    decoder.close()
    with pytest.raises(RuntimeError, match="closed"):
        decoder.generate(_prompt(2), 2)


def test_import_clusterfusion_does_not_import_transformers():
    import subprocess

    code = "import clusterfusion, sys; assert 'transformers' not in sys.modules, 'transformers imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@gpu
@pytest.mark.parametrize("fusions", [None, "auto"])
def test_cuda_graph_decoder_matches_huggingface(fusions):
    # fp16, a Pythia-2.8B-wide model of 4 layers: the captured step against
    # HuggingFace's eager forward, teacher-forced, then greedy and sampling.
    model = _model("cuda", torch.float16, hidden_size=2560, intermediate_size=10240, num_attention_heads=32,
                   num_hidden_layers=4, vocab_size=50304)
    prompt = torch.randint(0, 50304, (1, 12), device="cuda")
    decoder = Decoder(model, max_length=64, fusions=fusions)
    assert decoder.served_layers == ([] if fusions is None else [0, 1, 2, 3])
    tokens = _hf_greedy(model, prompt, 24)
    with torch.no_grad():
        expected = model(torch.cat([prompt, tokens[None, :-1].cuda()], 1)).logits[0, 11:].float()
    got = decoder.teacher_forced_logits(prompt, tokens.tolist())
    assert rel_err(got, expected.double()) < 1e-2
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.9
    greedy = decoder.generate(prompt, 24)
    assert list(decoder.stream(prompt, 24)) == greedy.tolist()
    seeded = [decoder.generate(prompt, 24, do_sample=True, top_p=0.9, generator=torch.Generator("cuda").manual_seed(3))
              for _ in range(2)]
    assert torch.equal(seeded[0], seeded[1])
    assert torch.equal(decoder.generate(prompt, 24, do_sample=True, top_k=1), greedy)
    decoder.close()


def test_logits_no_token_can_be_sampled_from_fail_loudly_on_cpu():
    model = _model()
    with torch.no_grad():
        model.get_output_embeddings().weight[7, 0] = float("nan")  # every step's logit 7 is NaN
    decoder = Decoder(model, max_length=32)
    with pytest.raises(ValueError, match="NaN"):
        decoder.generate(_prompt(4), 8, do_sample=True, generator=torch.Generator().manual_seed(0))


@gpu
@pytest.mark.parametrize("fusions", [None, "auto"])
def test_logits_no_token_can_be_sampled_from_fail_loudly_on_cuda(fusions):
    # The sampler returns -1 for such a row on the device; the Decoder reports it when it reads the tokens back.
    model = _model("cuda", torch.float16, hidden_size=256, intermediate_size=1024, num_attention_heads=4)
    with torch.no_grad():
        model.get_output_embeddings().weight[7, 0] = float("nan")
    decoder = Decoder(model, max_length=32, fusions=fusions)
    prompt = _prompt(4, "cuda")
    with pytest.raises(RuntimeError, match="no token could be sampled for new token 0"):
        decoder.generate(prompt, 8, do_sample=True, generator=torch.Generator("cuda").manual_seed(0))
    with pytest.raises(RuntimeError, match="no token could be sampled"):
        list(decoder.stream(prompt, 8, do_sample=True, top_p=0.5))
    greedy = decoder.generate(prompt, 8)  # the Decoder still serves: argmax takes the NaN as HuggingFace does
    assert greedy.shape == (8,)


@gpu
@pytest.mark.parametrize("fusions", [None, "auto"])
def test_a_new_mode_captured_after_a_request_that_filled_the_cache(fusions):
    # The first sampling request after a greedy one that filled the cache to
    # max_length captures the sampling step: its warm-up must start from an
    # empty cache, not write past the full one.
    model = _model("cuda", torch.float16, hidden_size=256, intermediate_size=1024, num_attention_heads=4)
    prompt = _prompt(6, "cuda")
    decoder = Decoder(model, max_length=16, fusions=fusions)
    greedy = decoder.generate(prompt, 10)  # 6 + 10 = max_length
    sampled = decoder.generate(prompt, 10, do_sample=True, top_p=0.9, generator=torch.Generator("cuda").manual_seed(5))
    torch.cuda.synchronize()
    fresh = Decoder(model, max_length=16, fusions=fusions)
    assert torch.equal(sampled, fresh.generate(prompt, 10, do_sample=True, top_p=0.9,
                                               generator=torch.Generator("cuda").manual_seed(5)))
    assert torch.equal(decoder.generate(prompt, 10), greedy)
    assert torch.equal(fresh.generate(prompt, 10), greedy)


def _decisive(logits: torch.Tensor, margin: float) -> torch.Tensor:
    """Rows whose top-1 logit leads the runner-up by more than `margin`."""
    top = logits.double().topk(2, dim=-1).values
    return top[:, 0] - top[:, 1] > margin


@gpu
@pytest.mark.parametrize("fusions", ["auto", ("mlp_block_residual",), ("attention_block", "mlp_down_residual")])
def test_cuda_decoder_meets_the_documented_fidelity(fusions):
    # The README's end-to-end bounds, as benchmark_e2e.py measures them: against
    # unpatched HuggingFace decoding the same way (the Decoder with fusions=None),
    # teacher-forced logits within 2e-3 of it (relative norm, every step), the same
    # top-1 wherever its top-1 is decisive (leads by more than twice the largest
    # error), and the same greedy tokens up to the first step where it is not.
    model = _model("cuda", torch.float16, hidden_size=2560, intermediate_size=10240, num_attention_heads=32,
                   num_hidden_layers=4, vocab_size=50304)
    prompt = torch.randint(0, 50304, (1, 16), device="cuda")
    continuation = torch.randint(0, 50304, (64,)).tolist()
    huggingface = Decoder(model, max_length=128, fusions=None)
    expected = huggingface.teacher_forced_logits(prompt, continuation).double()
    decoder = Decoder(model, max_length=128, fusions=fusions)
    got = decoder.teacher_forced_logits(prompt, continuation)
    rel = (got.double() - expected).norm(dim=-1) / expected.norm(dim=-1)
    assert rel.max() <= 2e-3, rel.max().item()
    error = (got.double() - expected).abs().max().item()
    decisive = _decisive(expected, 2 * error)
    assert decisive.float().mean() >= 0.5, "too few decisive steps for the check to mean anything"
    agree = got.argmax(-1) == expected.argmax(-1)
    assert agree[decisive].all(), (agree.logical_not() & decisive).nonzero().flatten().tolist()
    reference_tokens = huggingface.generate(prompt, 48)
    ours = decoder.generate(prompt, 48)
    steps = huggingface.teacher_forced_logits(prompt, reference_tokens.tolist())
    first_close = (~_decisive(steps, 2 * error)).nonzero()
    upto = int(first_close[0]) if len(first_close) else 48  # the tokens chosen by decisive logits
    assert torch.equal(ours[:upto], reference_tokens[:upto]), (ours.tolist(), reference_tokens.tolist(), upto)
