"""benchmark_e2e.py's host-side parts: the step floor it reports and its argument checks."""

from __future__ import annotations

import os
import sys

import pytest
import torch

pytest.importorskip("transformers")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import benchmark_e2e  # noqa: E402
from conftest import gpt_neox_model  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_the_floor_counts_every_parameter_once_and_the_cache_in_use(dtype):
    model = gpt_neox_model(dtype=dtype)
    c = model.config
    element = torch.finfo(dtype).bits // 8
    embed_in = model.gpt_neox.embed_in.weight
    expected = (sum(p.numel() for p in model.parameters()) - embed_in.numel() + c.hidden_size) * element
    assert benchmark_e2e.streamed_bytes(model) == expected
    kv = 2 * c.num_hidden_layers * c.hidden_size * (16 + 64 / 2) * element
    assert benchmark_e2e.floor_ms(model, 16, 64, 2.0) == pytest.approx((expected + kv) / 2e12 * 1e3)


def test_a_tied_lm_head_is_read_whole():
    model = gpt_neox_model(tie_word_embeddings=True)
    model.tie_weights()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    expected = sum(p.numel() for p in model.parameters()) * 4  # parameters() lists the shared weight once
    assert benchmark_e2e.streamed_bytes(model) == expected


@pytest.mark.parametrize("argv, words", [
    (["--layer-plan", "fused"], "argument --layer-plan: invalid choice: 'fused'"),
    (["--fusions", "attention"], "argument --fusions"),
])
def test_bad_arguments_are_named_before_the_gpu_check(argv, words, capsys):
    with pytest.raises(SystemExit):
        benchmark_e2e.main(argv)
    assert words in capsys.readouterr().err
