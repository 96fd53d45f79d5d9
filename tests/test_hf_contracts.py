"""The HuggingFace patch keeps HuggingFace's contracts: adapters, hooks, accelerate
offload, pickling, moves and casts after patching, training and gradients.

Each case compares a patched model with the same model unpatched (HuggingFace's
result) and, where the op can serve, checks that it did.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import DynamicCache, StaticCache  # noqa: E402

from clusterfusion.hf import FUSIONS, is_patched, patch_model, patched, unpatch_model  # noqa: E402
from clusterfusion.hf import eligibility, gpt_neox  # noqa: E402  (where the patch keeps its state and calls the ops)
from conftest import gpt_neox_model as _model, gpu, rel_err  # noqa: E402




def _ids(device="cpu"):
    return torch.randint(0, 128, (2, 7), device=device)


@torch.no_grad()
def _logits(model, ids):
    return model(ids).logits


@pytest.fixture
def op_calls(monkeypatch):
    """The patched forward's calls of the ops, by name: a fusion's name is its op's."""
    calls = []

    def counting(name, real):
        def op(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)

        return op

    for name in FUSIONS:  # where the patched forward looks the ops up
        monkeypatch.setattr(gpt_neox, name, counting(name, getattr(gpt_neox, name)))
    whole_layer = gpt_neox.gpt_neox_layer

    def layer(*args, **kwargs):  # the whole layer op serves both blocks' fusions
        calls.extend(("attention_block", "mlp_block_residual"))
        return whole_layer(*args, **kwargs)

    monkeypatch.setattr(gpt_neox, "gpt_neox_layer", layer)
    return calls


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(eligibility, "_WARNED", set())


# ---- adapters and hooks --------------------------------------------------------------


def _lora(model, target):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=[target], init_lora_weights=False)
    return peft.get_peft_model(model, config).eval()


@pytest.mark.parametrize("order", ["adapter-then-patch", "patch-then-adapter"])
def test_lora_on_the_down_projection_is_honoured(order, op_calls):
    ids = _ids()
    model = _model()
    if order == "patch-then-adapter":
        patch_model(model)
        model = _lora(model, "dense_4h_to_h")
        with pytest.warns(UserWarning, match="LoRA adapter on dense_4h_to_h"):
            got = _logits(model, ids)
        unpatch_model(model)
        expected = _logits(model, ids)
    else:
        model = _lora(model, "dense_4h_to_h")
        expected = _logits(model, ids)
        with pytest.warns(UserWarning, match=r"3 layer\(s\) 0-2 run HuggingFace's MLP branch: LoRA adapter on dense_4h_to_h"):
            assert patch_model(model).by_fusion == {
                "attention_block": [0, 1, 2], "mlp_block_residual": [], "mlp_down_residual": []
            }
        got = _logits(model, ids)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with model.disable_adapter():
        assert not torch.allclose(_logits(model, ids), expected)  # the adapter matters
    assert op_calls == []


def test_lora_on_the_up_projection_keeps_the_op(op_calls):
    ids = _ids()
    model = _lora(_model(), "dense_h_to_4h")
    expected = _logits(model, ids)
    assert patch_model(model) == [0, 1, 2]
    torch.testing.assert_close(_logits(model, ids), expected, rtol=1e-5, atol=1e-5)
    assert len(op_calls) == 3


@pytest.mark.parametrize("where", ["mlp", "dense_4h_to_h", "post_mlp_dropout"])
@pytest.mark.parametrize("kind", ["forward", "pre"])
def test_hooks_added_after_patching_fire_as_unpatched(where, kind, op_calls):
    ids = _ids()
    model = _model()
    patch_model(model)
    fired = []

    def module_of(layer):
        return layer.mlp if where == "mlp" else getattr(layer.mlp, where, None) or getattr(layer, where)

    def hook(module, args, output=None):
        fired.append(type(module).__name__)
        return None if output is None else output * 2  # the hook changes the result

    handles = [
        module_of(layer).register_forward_hook(hook) if kind == "forward" else module_of(layer).register_forward_pre_hook(hook)
        for layer in model.gpt_neox.layers
    ]
    with pytest.warns(UserWarning, match=f"hooks on {where}"):
        got = _logits(model, ids)
    assert op_calls == []
    patched_fired, fired[:] = len(fired), []
    unpatch_model(model)
    expected = _logits(model, ids)
    assert patched_fired == len(fired) == 3
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    for handle in handles:
        handle.remove()
    patch_model(model)
    _logits(model, ids)
    assert len(op_calls) == 3  # hooks gone: the op serves again


@pytest.mark.parametrize("where", ["post_attention_layernorm", "dense_h_to_4h", "act"])
def test_hooks_on_what_only_the_block_bypasses_leave_the_layer_to_the_down_op(where, op_calls):
    ids = _ids()
    model = _model()
    fired = []
    for layer in model.gpt_neox.layers:
        module = getattr(layer, where, None) or getattr(layer.mlp, where)
        module.register_forward_hook(lambda m, a, o: fired.append(1) or o * 2)
    with pytest.warns(UserWarning, match=f"3 layer\\(s\\) 0-2 run the MLP-down op: hooks on {where}"):
        report = patch_model(model)
    assert report == [0, 1, 2]
    assert report.by_fusion == {"attention_block": [0, 1, 2], "mlp_block_residual": [], "mlp_down_residual": [0, 1, 2]}
    got = _logits(model, ids)  # a prefill: HuggingFace's attention
    assert op_calls == ["mlp_down_residual"] * 3 and len(fired) == 3
    unpatch_model(model)
    torch.testing.assert_close(got, _logits(model, ids), rtol=1e-5, atol=1e-5)


def test_global_module_hooks_fall_back(op_calls):
    model = _model()
    patch_model(model)
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, a, o: seen.append(type(m).__name__))
    try:
        with pytest.warns(UserWarning, match="global module hooks"):
            _logits(model, _ids())
    finally:
        handle.remove()
    assert op_calls == [] and "Linear" in seen


# ---- accelerate ------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["offload-then-patch", "patch-then-offload"])
def test_accelerate_cpu_offload_matches_huggingface(order, op_calls):
    accelerate = pytest.importorskip("accelerate")
    ids = _ids()
    model = _model()
    expected = _logits(model, ids)
    if order == "patch-then-offload":
        patch_model(model)
        accelerate.cpu_offload(model, execution_device=torch.device("cpu"))
        with pytest.warns(UserWarning, match="accelerate hook on"):
            got = _logits(model, ids)
    else:
        accelerate.cpu_offload(model, execution_device=torch.device("cpu"))
        wrappers = [layer.__dict__.get("forward") for layer in model.gpt_neox.layers]
        with pytest.warns(UserWarning, match=r"3 layer\(s\) 0-2 run HuggingFace's forward: accelerate hook"):
            assert patch_model(model) == []
        got = _logits(model, ids)
        assert unpatch_model(model) == 3
        assert [layer.__dict__.get("forward") for layer in model.gpt_neox.layers] == wrappers
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert torch.isfinite(got).all() and op_calls == []


def test_unpatch_after_accelerate_wrapped_the_patched_forward(op_calls):
    # dispatch_model with a layer-level device map wraps each layer's forward,
    # keeping the one it wraps as _old_forward: here, the patched one.
    pytest.importorskip("accelerate")
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module, remove_hook_from_module
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXLayer

    ids = _ids()
    model = _model()
    expected = _logits(model, ids)
    patch_model(model)
    layers = model.gpt_neox.layers
    for layer in layers:
        add_hook_to_module(layer, AlignDevicesHook(execution_device="cpu", io_same_device=True))
    with pytest.warns(UserWarning, match="accelerate hook on the layer"):
        torch.testing.assert_close(_logits(model, ids), expected, rtol=0, atol=0)
    assert op_calls == []
    wrappers = [layer.__dict__["forward"] for layer in layers]
    assert unpatch_model(model) == 3
    assert [layer.__dict__["forward"] for layer in layers] == wrappers  # accelerate's wrapper stays
    assert not any(is_patched(layer) for layer in layers)
    torch.testing.assert_close(_logits(model, ids), expected, rtol=0, atol=0)
    remove_hook_from_module(model, recurse=True)
    assert all(layer.forward.__func__ is GPTNeoXLayer.forward for layer in layers)  # HuggingFace's own


def test_unpatch_restores_another_forward():
    model = _model()
    layer = model.gpt_neox.layers[1]
    theirs = torch.nn.Module.__call__.__get__(layer)  # any callable another library may have installed
    layer.forward = theirs
    patch_model(model)
    assert layer.forward is not theirs
    unpatch_model(model)
    assert layer.__dict__["forward"] is theirs
    assert "forward" not in model.gpt_neox.layers[0].__dict__


def test_meta_weights_fall_back_with_a_named_reason():
    model = _model()
    model.gpt_neox.layers[2].mlp.dense_4h_to_h.to("meta")
    with pytest.warns(UserWarning, match=r"1 layer\(s\) 2 run HuggingFace's MLP branch: weights not materialized"):
        assert patch_model(model).by_fusion == {
            "attention_block": [0, 1, 2], "mlp_block_residual": [0, 1], "mlp_down_residual": []
        }


def test_op_refuses_meta_mixed_with_real_tensors():
    import clusterfusion

    h = torch.randn(2, 64)
    weight = torch.empty(64, 128, device="meta")
    with pytest.raises(ValueError, match=r"argument 'hidden_states' is on cpu; expected meta like 'weight'"):
        clusterfusion.mlp_down_residual(h, torch.randn(2, 64), torch.randn(2, 128), weight, None)
    meta = [t.to("meta") for t in (h, torch.randn(2, 64), torch.randn(2, 128))]
    out = clusterfusion.mlp_down_residual(*meta, weight, None)  # all meta: shape inference only
    assert out.device.type == "meta" and out.shape == (2, 64)


# ---- pickling, copies, moves and casts ---------------------------------------------------


def test_patched_model_pickles_and_deep_copies(op_calls):
    ids = _ids()
    model = _model()
    patch_model(model)
    expected = _logits(model, ids)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    copied = copy.deepcopy(model)
    for clone in (loaded, copied):
        assert all(is_patched(layer) for layer in clone.gpt_neox.layers)
        assert all(layer.forward.args[0] is layer for layer in clone.gpt_neox.layers)  # bound to the clone
        del op_calls[:]
        torch.testing.assert_close(_logits(clone, ids), expected, rtol=0, atol=0)
        assert len(op_calls) == 3
        assert unpatch_model(clone) == 3


def test_a_model_pickled_patched_before_hf_became_a_package_finds_its_forward():
    import pickle

    assert pickle.loads(b"cclusterfusion.hf\n_patched_forward\n.") is gpt_neox.patched_forward


@pytest.mark.parametrize("cast", ["double", "bfloat16", "half"])
def test_casting_after_patching_keeps_working(cast):
    ids = _ids()
    model = _model()
    patch_model(model)
    getattr(model, cast)()
    got = _logits(model, ids)
    unpatch_model(model)
    expected = _logits(model, ids)
    assert got.dtype == expected.dtype
    tolerance = {"double": 1e-12, "bfloat16": 3e-2, "half": 3e-3}[cast]
    assert rel_err(got, expected.double()) < tolerance


# ---- training and gradients ---------------------------------------------------------------


def test_model_patched_in_training_mode_is_served_after_eval(op_calls):
    ids = _ids()
    model = _model(hidden_dropout=0.1).train()
    assert patch_model(model) == [0, 1, 2]  # training mode is decided per call
    torch.manual_seed(5)
    got = model(ids).logits
    unpatch_model(model)
    torch.manual_seed(5)
    expected = model(ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)  # HuggingFace's forward, dropout included
    assert op_calls == []
    patch_model(model)
    model.eval()
    reference = _model(hidden_dropout=0.1)
    torch.testing.assert_close(_logits(model, ids), _logits(reference, ids), rtol=1e-5, atol=1e-5)
    assert len(op_calls) == 3


def test_gradients_with_grad_enabled_match_huggingface(op_calls):
    ids = _ids()
    model = _model()
    patch_model(model)
    model(ids, labels=ids).loss.backward()  # eval mode, grad mode on, parameters require grad
    got = [p.grad.clone() for p in model.parameters()]
    assert op_calls == []
    model.zero_grad()
    unpatch_model(model)
    model(ids, labels=ids).loss.backward()
    for g, p in zip(got, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=0, atol=0)


def test_inference_mode_uses_the_op(op_calls):
    model = _model()
    patch_model(model)
    with torch.inference_mode():
        model(_ids())
    assert len(op_calls) == 3


@gpu
@torch.no_grad()
def test_cuda_model_cast_and_moved_after_patching(op_calls):
    model = _model("cuda", torch.float16, hidden_size=256, intermediate_size=1024, num_attention_heads=4)
    ids = _ids("cuda")
    assert patch_model(model) == [0, 1, 2]
    fp16 = _logits(model, ids)
    assert len(op_calls) == 3
    model.float()  # the CUDA kernel takes fp16/bf16: HuggingFace serves fp32
    with pytest.warns(UserWarning, match="'weight' has dtype Float"):
        got = _logits(model, ids)
    assert len(op_calls) == 3
    unpatch_model(model)
    expected = _logits(model, ids)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert rel_err(fp16, expected.double()) < 1e-2
    with pytest.warns(UserWarning, match="'weight' has dtype Float"):
        assert patch_model(model) == []  # patched all the same: the op serves once the model is cast back
    model.half()
    torch.testing.assert_close(_logits(model, ids), fp16, rtol=0, atol=0)
    assert len(op_calls) == 6
    model.to("cpu")
    cpu = _logits(model, ids.cpu())
    assert len(op_calls) == 9 and rel_err(cpu, expected.cpu().double()) < 1e-2


def _assert_no_graph_breaks(model, ids):
    """torch.compile traces model(ids) whole (dynamo's explain, from a reset cache, reset again after)."""
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(ids)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()


@pytest.mark.parametrize("fusions", ["mlp_block_residual", "mlp_down_residual"])
def test_patched_model_compiles_without_graph_breaks(fusions, op_calls):
    ids = _ids()
    model = _model()
    expected = _logits(model, ids)
    patch_model(model, fusions)
    with torch.no_grad():
        _assert_no_graph_breaks(model, ids)
        got = torch.compile(model)(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert set(op_calls) == {fusions}


# ---- the attention block --------------------------------------------------------------


@torch.no_grad()
def _static_decode(model, prompt, steps, max_len=24):
    """Prefill then greedy decode steps with a StaticCache: each step's logits, and the cache."""
    cache = StaticCache(config=model.config, max_cache_len=max_len)
    logits = model(prompt, past_key_values=cache, use_cache=True).logits[:, -1]
    out = [logits]
    for _ in range(steps):
        logits = model(logits.argmax(-1, keepdim=True), past_key_values=cache, use_cache=True).logits[:, -1]
        out.append(logits)
    return torch.stack(out), cache


def test_attention_block_serves_static_cache_decode_steps(op_calls):
    model = _model()
    prompt = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(7))
    expected, expected_cache = _static_decode(model, prompt, 6)
    with patched(model) as report:
        assert report.by_fusion["attention_block"] == [0, 1, 2]
        got, cache = _static_decode(model, prompt, 6)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert op_calls.count("attention_block") == 3 * 6  # every decode step; the prefill is HuggingFace's
    assert op_calls.count("mlp_block_residual") == 3 * 7
    assert int(cache.get_seq_length()) == int(expected_cache.get_seq_length()) == 11
    for ours, theirs in zip(cache.layers, expected_cache.layers):
        torch.testing.assert_close(ours.keys, theirs.keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.values, theirs.values, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_attention_block_leaves_dynamic_caches_and_batches_to_huggingface(op_calls):
    model = _model()
    patch_model(model)
    with pytest.warns(UserWarning, match="HuggingFace's attention: the cache layer is a DynamicLayer"):
        model(torch.tensor([[3]]), past_key_values=DynamicCache(config=model.config), use_cache=True)
    prompt = torch.randint(0, 128, (2, 4))
    cache = StaticCache(config=model.config, max_cache_len=8)
    model(prompt, past_key_values=cache, use_cache=True)
    with pytest.warns(UserWarning, match=r"HuggingFace's attention: batch 2 \(the attention block decodes batch 1\)"):
        model(prompt[:, :1], past_key_values=cache, use_cache=True)
    assert "attention_block" not in op_calls


@pytest.mark.parametrize("where", ["query_key_value", "dense", "input_layernorm", "attention"])
def test_hooks_on_the_attention_branch_leave_it_to_huggingface(where, op_calls):
    model = _model()
    prompt = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(8))
    fired = []
    for layer in model.gpt_neox.layers:
        module = getattr(layer, where, None) or getattr(layer.attention, where)
        module.register_forward_hook(lambda m, a, o: fired.append(1) or None)
    expected, _ = _static_decode(model, prompt, 3)
    fired.clear()
    with pytest.warns(UserWarning, match=f"3 layer\\(s\\) 0-2 run HuggingFace's attention: hooks on {where}"):
        patch_model(model)
    got, _ = _static_decode(model, prompt, 3)
    assert "attention_block" not in op_calls and op_calls.count("mlp_block_residual") == 12 and len(fired) == 12
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_fails_loudly_when_the_attention_or_its_cache_api_changes(monkeypatch):
    from transformers.models.gpt_neox import modeling_gpt_neox

    def changed(self, hidden_states, attention_mask, past_key_values=None, position_embeddings=None, **kwargs):
        return hidden_states, None

    monkeypatch.setattr(modeling_gpt_neox.GPTNeoXAttention, "forward", changed)
    with pytest.raises(RuntimeError, match=r"changed GPTNeoXAttention.forward .* fusions=\(\"mlp_block_residual\",\)"):
        patch_model(_model())
    assert patch_model(_model(), fusions=("mlp_block_residual",)) == [0, 1, 2]  # the MLP fusions do not depend on it


def test_static_cache_decode_steps_compile_without_graph_breaks(op_calls):
    """The Decoder's step: a fresh static cache's first call, then decode steps after a prefill."""
    model = _model()
    prompt = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(9))
    patch_model(model)
    expected, _ = _static_decode(model, prompt, 3)
    cache = StaticCache(config=model.config, max_cache_len=24)

    def step(token):
        return model(token, past_key_values=cache, use_cache=True).logits[:, -1]

    torch._dynamo.reset()
    with torch.no_grad():
        for _ in range(2):  # uninitialized cache, then a decode step
            explained = torch._dynamo.explain(step)(torch.tensor([[1]]))
            assert explained.graph_break_count == 0, explained.break_reasons
        torch._dynamo.reset()
        cache.reset()
        compiled = torch.compile(step)
        got = [model(prompt, past_key_values=cache, use_cache=True).logits[:, -1]]
        for _ in range(3):
            got.append(compiled(got[-1].argmax(-1, keepdim=True)))
    torch.testing.assert_close(torch.stack(got), expected, rtol=1e-5, atol=1e-5)
    assert "attention_block" in op_calls


# ---- torch.compile and torch.export on the fallback and the fused paths ----------------


@pytest.mark.parametrize("mode", ["train", "grad"])
def test_fallback_compiles_without_graph_breaks(mode, op_calls):
    # Training, or autograd needing the layer: HuggingFace's forward runs, and
    # torch.compile(fullgraph=True) traces it as it traces the unpatched model.
    ids = _ids()
    model = _model()
    model.train(mode == "train")
    torch.manual_seed(0)
    expected = model(ids).logits
    patch_model(model)
    _assert_no_graph_breaks(model, ids)
    torch.manual_seed(0)
    got = torch.compile(model, fullgraph=True, backend="eager")(ids).logits
    if mode == "grad":  # no dropout: the same numbers
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        got.sum().backward()
    assert op_calls == []


@pytest.mark.parametrize("fusions", ["mlp_block_residual", "mlp_down_residual"])
def test_export_under_no_grad_uses_the_ops(fusions, op_calls):
    ids = _ids()
    model = _model()
    expected = _logits(model, ids)
    patch_model(model, fusions)
    with torch.no_grad():
        exported = torch.export.export(model, (ids,), kwargs={"use_cache": False})
        targets = [str(node.target) for node in exported.graph.nodes if node.op == "call_function"]
        assert targets.count(f"clusterfusion.{fusions}.default") == 3, targets
        got = exported.module()(ids, use_cache=False).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_export_asks_the_backend_for_a_layout_it_has_not_seen(monkeypatch):
    # A weight layout first met under export (fake weights) is answered for a real
    # tensor of that layout, not taken for a wrapped weight.
    ids = _ids()
    model = _model()
    patch_model(model, "mlp_down_residual")
    monkeypatch.setattr(eligibility, "_WEIGHT_REASONS", {})
    with torch.no_grad():
        exported = torch.export.export(model, (ids,), kwargs={"use_cache": False})
    targets = [str(node.target) for node in exported.graph.nodes]
    assert targets.count("clusterfusion.mlp_down_residual.default") == 3


# ---- caches the attention block must not write directly --------------------------------


def test_a_position_past_the_cache_raises_as_huggingface_does(op_calls):
    # The CPU backend reads the position on the host and raises; HuggingFace's own
    # update raises too. (On CUDA the kernel stops with a device-side assert:
    # tests/test_device_errors.py.)
    model = _model()
    prompt = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(4))

    def decode_past_the_end(max_len=8):
        cache = StaticCache(config=model.config, max_cache_len=max_len)
        with torch.no_grad():
            logits = model(prompt, past_key_values=cache, use_cache=True).logits[:, -1]
            for _ in range(max_len):
                logits = model(logits.argmax(-1, keepdim=True), past_key_values=cache, use_cache=True).logits[:, -1]

    with pytest.raises((IndexError, RuntimeError)):
        decode_past_the_end()
    patch_model(model)
    with pytest.raises(ValueError, match="cache_position"):
        decode_past_the_end()
    assert op_calls.count("attention_block") == 3 * 2 + 1  # positions 6 and 7 served; 8 refused by layer 0


@gpu
@torch.no_grad()
def test_an_offloading_static_cache_is_left_to_huggingface(op_calls):
    model = _model("cuda", torch.float16, hidden_size=256, intermediate_size=1024, num_attention_heads=4)
    prompt = torch.randint(0, 128, (1, 5), device="cuda", generator=torch.Generator("cuda").manual_seed(2))

    def decode(steps=6):
        cache = StaticCache(config=model.config, max_cache_len=24, offloading=True)
        logits = model(prompt, past_key_values=cache, use_cache=True).logits[:, -1]
        out = [logits]
        for _ in range(steps):
            logits = model(logits.argmax(-1, keepdim=True), past_key_values=cache, use_cache=True).logits[:, -1]
            out.append(logits)
        torch.cuda.synchronize()
        return torch.stack(out)

    expected = decode()
    patch_model(model)
    with pytest.warns(UserWarning, match="HuggingFace's attention: an offloading cache"):
        got = decode()
    assert "attention_block" not in op_calls and op_calls.count("mlp_block_residual") == 3 * 7
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=2e-3)
