"""HuggingFace GPT-NeoX integration: patched layers compute what HuggingFace computes."""

from __future__ import annotations


import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import DynamicCache, StaticCache  # noqa: E402

from clusterfusion._fusions import parse_fusions  # noqa: E402
from clusterfusion.hf import is_patched, patch_model, patched, unpatch_model  # noqa: E402
from conftest import gpt_neox_model as _model, gpu, rel_err  # noqa: E402

PYTHIA_2B8 = dict(
    vocab_size=50304, hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, intermediate_size=10240,
    rotary_pct=0.25, max_position_embeddings=2048, use_parallel_residual=True,
)



def _decode_logits(model, ids, steps, cache):
    """Prefill on ids, then `steps` greedy decode steps; returns every step's logits."""
    out = model(ids, past_key_values=cache, use_cache=True)
    logits = [out.logits[:, -1]]
    token = out.logits[:, -1:].argmax(-1)
    for _ in range(steps):
        out = model(token, past_key_values=out.past_key_values, use_cache=True)
        logits.append(out.logits[:, -1])
        token = out.logits[:, -1:].argmax(-1)
    return torch.stack(logits), out.logits


def _cache(kind, model, length):
    return DynamicCache(config=model.config) if kind == "dynamic" else StaticCache(config=model.config, max_cache_len=length)


@pytest.mark.parametrize("cache_kind, batch", [("dynamic", 2), ("static", 2), ("static", 1)])
@torch.no_grad()
def test_patched_logits_match_huggingface_on_cpu(cache_kind, batch):
    # Batch 1 with a static cache is the attention block's case: its CPU backend serves the decode steps.
    model = _model()
    ids = torch.randint(0, 128, (batch, 7), generator=torch.Generator().manual_seed(1))
    ref, _ = _decode_logits(model, ids, 5, _cache(cache_kind, model, 16))
    report = patch_model(model)
    assert report == [0, 1, 2] and report.by_fusion["attention_block"] == [0, 1, 2]
    got, _ = _decode_logits(model, ids, 5, _cache(cache_kind, model, 16))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    unpatch_model(model)


@pytest.mark.parametrize("fusions, served_by", [
    ("auto", "mlp_block_residual"), ("mlp_block_residual", "mlp_block_residual"),
    (("mlp_down_residual",), "mlp_down_residual"), (["mlp_down_residual", "mlp_block_residual"], "mlp_block_residual"),
])
@torch.no_grad()
def test_fusions_choose_the_op_and_the_report_says_which(fusions, served_by):
    model = _model()
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(3))
    ref = model(ids).logits
    report = patch_model(model, fusions=fusions)
    assert report == [0, 1, 2] and report.by_fusion[served_by] == [0, 1, 2]
    assert sum(len(v) for k, v in report.by_fusion.items() if k != "attention_block") == 3
    assert report.by_fusion.get("attention_block", [0, 1, 2]) == [0, 1, 2]
    torch.testing.assert_close(model(ids).logits, ref, rtol=1e-5, atol=1e-5)
    unpatch_model(model)


@torch.no_grad()
def test_another_activation_leaves_the_layer_to_the_down_op():
    model = _model(hidden_act="gelu_new")
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(4))
    ref = model(ids).logits
    with pytest.warns(UserWarning, match=r"3 layer\(s\) 0-2 run the MLP-down op: act is a transformers"):
        report = patch_model(model)
    assert report.by_fusion == {"attention_block": [0, 1, 2], "mlp_block_residual": [], "mlp_down_residual": [0, 1, 2]}
    torch.testing.assert_close(model(ids).logits, ref, rtol=1e-5, atol=1e-5)
    with pytest.warns(UserWarning, match=r"run HuggingFace's forward: act is a transformers"):
        assert patch_model(model, fusions="mlp_block_residual") == []


@pytest.mark.parametrize("fusions", [None, (), "mlp_up", ("mlp_block_residual", "attention"), 3])
def test_bad_fusions(fusions):
    with pytest.raises(ValueError, match="argument 'fusions' must"):
        patch_model(_model(), fusions=fusions)


def test_patch_model_needs_a_fusion():
    """None is the Decoder's "no fusion"; patch_model has nothing to do with it, and says what it takes."""
    with pytest.raises(ValueError, match=r"patch_model: argument 'fusions' must be \"auto\" or a selection of .*got None"):
        patch_model(_model(), fusions=None)


@pytest.mark.parametrize("former, fusion", [("mlp_block", "mlp_block_residual"), ("mlp_down", "mlp_down_residual")])
def test_former_fusion_names_stand_for_the_fusion_they_named(former, fusion):
    assert parse_fusions(former, "test") == (fusion,)
    assert parse_fusions([former, fusion, "attention_block"], "test") == ("attention_block", fusion)
    report = patch_model(_model(), fusions=(former,))
    assert report == [0, 1, 2] and report.by_fusion == {fusion: [0, 1, 2]}  # keyed by the fusion's name


@torch.no_grad()
def test_patched_generate_matches_on_cpu():
    model = _model()
    ids = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(2))
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    ref = model.generate(ids, **kwargs)
    with patched(model):
        got = model.generate(ids, **kwargs)
    assert torch.equal(got, ref)


def test_unpatch_restores_huggingface_forward():
    model = _model()
    layers = model.gpt_neox.layers
    patch_model(model)
    patch_model(model)  # idempotent
    assert all(is_patched(layer) and "forward" in layer.__dict__ for layer in layers)
    assert unpatch_model(model) == 3
    assert all(not is_patched(layer) and "forward" not in layer.__dict__ for layer in layers)
    with patched(model) as served:
        assert served == [0, 1, 2]
    assert not any(is_patched(layer) for layer in layers)


def test_layers_without_parallel_residual_are_left_alone():
    model = _model(use_parallel_residual=False)
    with pytest.warns(UserWarning, match=r"3 layer\(s\) 0-2 run HuggingFace's forward: no parallel residual"):
        assert patch_model(model) == []
    assert not any(is_patched(layer) for layer in model.gpt_neox.layers)


def test_patched_layer_defers_to_huggingface_in_training_mode():
    model = _model()
    patch_model(model)
    model.train()
    ids = torch.randint(0, 128, (1, 6))
    loss = model(ids, labels=ids).loss
    loss.backward()  # HuggingFace's forward ran: gradients flow
    assert model.gpt_neox.layers[0].mlp.dense_4h_to_h.weight.grad is not None


def test_rejects_a_model_without_gpt_neox_layers():
    with pytest.raises(TypeError, match="holds no GPTNeoXLayer"):
        patch_model(torch.nn.Linear(2, 2))


def test_fails_loudly_when_the_layer_signature_changes(monkeypatch):
    from transformers.models.gpt_neox import modeling_gpt_neox

    def changed(self, hidden_states, attention_mask=None, cache=None):
        return hidden_states

    monkeypatch.setattr(modeling_gpt_neox.GPTNeoXLayer, "forward", changed)
    with pytest.raises(RuntimeError, match="GPTNeoXLayer.forward in transformers .* takes"):
        patch_model(_model())


@gpu
def test_float32_cuda_model_is_left_alone():
    model = _model("cuda")
    with pytest.warns(UserWarning, match=r"'weight' has dtype Float; the CUDA implementation supports"):
        assert patch_model(model) == []


@gpu
@torch.no_grad()
def test_misaligned_down_weight_is_left_alone():
    model = _model("cuda", torch.float16)
    down = model.gpt_neox.layers[1].mlp.dense_4h_to_h
    storage = torch.empty(down.weight.numel() + 1, device="cuda", dtype=torch.float16)
    shifted = storage[1:].view_as(down.weight)  # starts 2 bytes past a 16-byte boundary
    shifted.copy_(down.weight)
    down.weight = torch.nn.Parameter(shifted, requires_grad=False)
    with pytest.warns(UserWarning, match=r"1 layer\(s\) 1 run HuggingFace's forward: .*'weight' must start at a 16-byte aligned address"):
        assert patch_model(model) == [0, 2]


GPU_FUSIONS = [("mlp_block_residual",), ("mlp_down_residual",), ("attention_block", "mlp_block_residual")]


@gpu
@pytest.mark.parametrize("fusions", GPU_FUSIONS, ids=",".join)
@torch.no_grad()
def test_pythia_2b8_fp16_patched_matches_huggingface(fusions):
    model = _model("cuda", torch.float16, **PYTHIA_2B8)
    ids = torch.randint(0, 50304, (1, 12), device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    for cache_kind in ["dynamic", "static"]:
        ref, _ = _decode_logits(model, ids, 6, _cache(cache_kind, model, 32))
        with patched(model, fusions) as served:
            assert all(served.by_fusion[f] == list(range(32)) for f in fusions)
            got, _ = _decode_logits(model, ids, 6, _cache(cache_kind, model, 32))
        assert rel_err(got, ref.double()) < 1e-2
        assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.85


@gpu
@pytest.mark.parametrize("fusions", GPU_FUSIONS, ids=",".join)
@torch.no_grad()
def test_cuda_graph_decoding_with_patch_matches_unpatched_huggingface(fusions):
    model = _model("cuda", torch.float16, **{**PYTHIA_2B8, "num_hidden_layers": 4})
    prompt = torch.randint(0, 50304, (1, 8), device="cuda", generator=torch.Generator("cuda").manual_seed(4))
    steps = 6

    # Unpatched HuggingFace, eager, greedy: the tokens fed and each step's logits.
    cache = StaticCache(config=model.config, max_cache_len=32)
    tokens = [model(prompt, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)]
    expected = []
    for _ in range(steps):
        logits = model(tokens[-1], past_key_values=cache, use_cache=True).logits[:, -1]
        expected.append(logits.double())
        tokens.append(logits.argmax(-1, keepdim=True))

    # Patched, one decode step captured in a CUDA graph, fed the same tokens.
    with patched(model, fusions) as served:
        assert all(served.by_fusion[f] == [0, 1, 2, 3] for f in fusions)
        assert all(is_patched(layer) for layer in model.gpt_neox.layers)
        cache = StaticCache(config=model.config, max_cache_len=32)
        model(prompt, past_key_values=cache, use_cache=True)
        static_token = tokens[0].clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_logits = model(static_token, past_key_values=cache, use_cache=True).logits[:, -1]
        # Capture recorded but did not run the step: rebuild the cache and replay from the prompt.
        cache.reset()
        model(prompt, past_key_values=cache, use_cache=True)
        got = []
        for token in tokens[:steps]:
            static_token.copy_(token)
            static_logits.fill_(float("nan"))
            graph.replay()
            got.append(static_logits.clone())
    got, expected = torch.stack(got), torch.stack(expected)
    assert rel_err(got, expected) < 1e-2
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.8
