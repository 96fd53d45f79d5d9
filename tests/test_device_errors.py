"""Values only the device sees fail loudly: a cache position past the cache stops the
attention kernel (and the layer kernel) with a device-side assert (as HuggingFace's own cache update does),
directly and through the HuggingFace patch, never NaN. Each case runs in a child
process, since a device-side assert ends the CUDA context."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import clusterfusion
from conftest import gpu

_TESTS = os.path.dirname(os.path.abspath(__file__))
# What the attention kernel's assert says (csrc/ops/attention_block/decode_attention.cuh).
_KERNEL_ASSERT = "clusterfusion.attention_block: cache_position within [0, key_cache.shape[2])"
# The layer kernel's (csrc/ops/gpt_neox_layer/layer_kernel.cuh).
_LAYER_ASSERT = "clusterfusion.gpt_neox_layer: cache_position within [0, key_cache.shape[2])"


def _run(code: str) -> subprocess.CompletedProcess:
    # The child imports clusterfusion as the parent did (the repository root first) and the tests' helpers.
    root = os.path.dirname(os.path.dirname(os.path.abspath(clusterfusion.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, _TESTS, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)


def _assert_stops(inputs: str, call: str, message: str) -> None:
    """Runs in a child: `inputs` (code that builds the dict `inputs` with a position
    outside the cache), then `call` on it; the child must stop with a device-side
    assert that says `message`, before the synchronization returns."""
    result = _run(inputs + f"""
        out = {call}
        print("finite" if torch.isfinite(out).all() else "nan", flush=True)
        torch.cuda.synchronize()
        print("no error", flush=True)
    """)
    assert result.returncode != 0, result.stdout
    assert "device-side assert triggered" in result.stderr, result.stderr[-2000:]
    assert message in result.stdout + result.stderr, (result.stdout + result.stderr)[-2000:]
    assert "no error" not in result.stdout


@gpu
@pytest.mark.parametrize("position", [8, 9, 1 << 40, -1])
def test_attention_block_asserts_on_a_position_outside_the_cache(position):
    _assert_stops(f"""
        import torch, clusterfusion
        from test_attention_block import make_step
        inputs = make_step(256, 4, 16, 8, 0, torch.float16, "cuda")
        inputs["cache_position"] = torch.tensor({position}, device="cuda")
    """, "clusterfusion.attention_block(**inputs)", _KERNEL_ASSERT)


@gpu
@pytest.mark.parametrize("position", [8, -1])
def test_the_layer_kernel_asserts_on_a_position_outside_the_cache(position):
    _assert_stops(f"""
        import torch, clusterfusion
        from test_gpt_neox_layer import make_layer
        inputs = make_layer(0, torch.float16, "cuda", shape=(512, 8, 2048, 16), max_len=8)
        inputs["cache_position"] = torch.tensor({position}, device="cuda")
    """, 'clusterfusion.gpt_neox_layer(**inputs, layer_plan="one_launch")', _LAYER_ASSERT)


@gpu
def test_patched_model_past_its_static_cache_fails_like_huggingface():
    code = """
        import torch, clusterfusion
        from transformers import StaticCache
        from clusterfusion.hf import patch_model
        from conftest import gpt_neox_model
        model = gpt_neox_model("cuda", torch.float16, hidden_size=256, intermediate_size=1024, num_attention_heads=4)
        if {patch}:
            patch_model(model)
        cache = StaticCache(config=model.config, max_cache_len=8)
        with torch.no_grad():
            logits = model(torch.tensor([[1, 2, 3, 4, 5, 6]], device="cuda"), past_key_values=cache,
                           use_cache=True).logits[:, -1]
            for step in range(4):
                logits = model(logits.argmax(-1, keepdim=True), past_key_values=cache, use_cache=True).logits[:, -1]
                print(step, "finite" if torch.isfinite(logits).all().item() else "nan", flush=True)
    """
    for patch in (False, True):  # HuggingFace, then the patch: both fail at the step past the cache
        result = _run(code.format(patch=patch))
        assert result.returncode != 0, (patch, result.stdout)
        assert "nan" not in result.stdout, (patch, result.stdout)
        if patch:  # the attention kernel's own assert, not HuggingFace's index_copy_
            assert "device-side assert triggered" in result.stderr, result.stderr[-2000:]
            assert _KERNEL_ASSERT in result.stdout + result.stderr, (result.stdout + result.stderr)[-2000:]
        assert result.stdout.splitlines()[:2] == ["0 finite", "1 finite"], (patch, result.stdout)
