"""clusterfusion.mlp_down_residual's launch plans: every layout the planner may
pick computes the same function, and the tuning knobs reach the op per call and
through a context (clusterfusion.tuning itself: tests/test_tuning.py).

The planner chooses one plan per device and shape, so the correctness tests
only exercise the plans the test card leads to. Here pinned plans cover the
others: odd cluster sizes, tiles of an odd multiple of 8 outputs, output
shares that do not divide the tile, tiles that overhang the matrix, and CTAs
left without reduction work.
"""

from __future__ import annotations

import re

import pytest
import torch

import clusterfusion
from conftest import assert_matches, call_poisoned, gpu, make_mlp_down_inputs, mlp_down_reference

# BLOCK_N:CLUSTER:STAGES
PINNED_PLANS = [
    "8:1:2",     # narrowest tile (half a warp's outputs), no cluster reduction
    "40:2:32",   # an odd multiple of 8 outputs: the last warp drops half its rows; deepest ring
    "32:3:3",    # odd cluster size: ranks own 11, 11 and 10 outputs
    "48:7:2",    # on ffn=520 (9 chunks) two of the seven CTAs get no chunk
    "160:8:4",   # on hidden=4104 the last tile overhangs: two ranks own no output
    "256:5:16",  # stages cut to what fits in shared memory
]
SHAPES = [(2560, 10240), (4104, 1032), (1000, 520)]


@gpu
@pytest.mark.parametrize("plan", PINNED_PLANS)
@pytest.mark.parametrize("pdl", [True, False], ids=["pdl", "no-pdl"])
def test_pinned_plan_matches_float64(plan, pdl):
    block_n, cluster, stages = map(int, plan.split(":"))
    failures = []
    with clusterfusion.tuning(plan=plan, pdl=pdl):
        for hidden, ffn in SHAPES:
            for m in (1, 3, 16):
                for dtype in (torch.float16, torch.bfloat16):
                    inputs = make_mlp_down_inputs(m, hidden, ffn, dtype, "cuda")
                    chosen = clusterfusion.mlp_down_residual_plan(inputs["weight"], m)
                    assert (chosen.block_n, chosen.cluster_size) == (block_n, cluster), chosen
                    assert chosen.stages <= min(stages, chosen.chunks_per_cta), chosen
                    out = call_poisoned(clusterfusion.mlp_down_residual, inputs)
                    try:
                        assert_matches(out, mlp_down_reference(**inputs), dtype, what=f"{hidden}x{ffn} m={m} {dtype}")
                    except AssertionError as error:
                        failures.append(str(error))
    assert not failures, failures


@gpu
def test_per_call_plan_overrides_the_context():
    inputs = make_mlp_down_inputs(2, 2560, 10240, torch.float16, "cuda")
    weight = inputs["weight"]
    with clusterfusion.tuning(plan="64:2"):
        assert clusterfusion.mlp_down_residual_plan(weight, 2)[:2] == (64, 2)
        assert clusterfusion.mlp_down_residual_plan(weight, 2, plan="32:1:4")[:3] == (32, 1, 4)
        out = clusterfusion.mlp_down_residual(**inputs, plan="32:1:4", pdl=False)
    assert_matches(out, mlp_down_reference(**inputs), torch.float16)


@gpu
def test_auto_plan_fits_the_device():
    props = torch.cuda.get_device_properties(0)
    for hidden, ffn in [(2560, 10240), (4096, 16384)]:
        weight = torch.randn(hidden, ffn, device="cuda", dtype=torch.float16)
        for m in (1, 16):
            p = clusterfusion.mlp_down_residual_plan(weight, m)
            assert p.n_tiles * p.block_n >= hidden and p.cluster_size * p.chunks_per_cta * 64 >= ffn
            assert p.n_tiles <= p.resident_clusters  # one wave
            assert p.cluster_size * p.n_tiles <= props.multi_processor_count
            assert p.smem_bytes <= props.shared_memory_per_block_optin


@gpu
def test_plan_query_rejects_bad_arguments():
    weight = torch.randn(256, 1024, device="cuda", dtype=torch.float16)
    with pytest.raises(ValueError, match=r"argument 'm' must be in \[1, 16\].*got 17"):
        clusterfusion.mlp_down_residual_plan(weight, 17)
    with pytest.raises(ValueError, match=r"argument 'plan' must be .*got \"9:2\""):
        clusterfusion.mlp_down_residual_plan(weight, 1, plan="9:2")


def test_the_former_plan_type_name_is_the_projection_plan():
    assert clusterfusion.MlpDownPlan is clusterfusion.ProjectionPlan
    assert "MlpDownPlan" in clusterfusion.__all__ and "ProjectionPlan" in clusterfusion.__all__


def test_plan_query_needs_a_cuda_weight():
    with pytest.raises(ValueError, match=r"launch plans exist for CUDA weights only"):
        clusterfusion.mlp_down_residual_plan(torch.randn(8, 16), 1)


@pytest.mark.parametrize(
    "plan", ["9:2", "8:9", "8:2:1", "8:2:33", "264:1", "abc", "8", "8:2:4:1", "8:2:4x", "184:8x", "184:8 junk",
             "184:8:", " 184:8", "+184:8"]
)
def test_malformed_plan_is_a_value_error(plan):
    inputs = make_mlp_down_inputs(2, 64, 128, torch.float32, "cpu")
    grammar = rf"argument 'plan' must be \"auto\" or \"BLOCK_N:CLUSTER\[:STAGES\]\".*got \"{re.escape(plan)}\""
    with pytest.raises(ValueError, match=grammar):
        clusterfusion.mlp_down_residual(**inputs, plan=plan)
    with pytest.raises(ValueError, match="clusterfusion.tuning: " + grammar):  # where the pin is set
        with clusterfusion.tuning(plan=plan):
            pass


def test_tuning_reaches_the_op_under_torch_compile(monkeypatch):
    # The plan in force must reach the op traced by dynamo: a malformed one
    # (which clusterfusion.tuning itself refuses, so it is set directly) makes the op raise.
    torch._dynamo.reset()
    compiled = torch.compile(clusterfusion.mlp_down_residual, fullgraph=True)
    inputs = make_mlp_down_inputs(2, 64, 128, torch.float32, "cpu")
    assert_matches(compiled(**inputs), mlp_down_reference(**inputs), torch.float32)
    monkeypatch.setattr(clusterfusion._tuning._state, "current", clusterfusion.Tuning(plan="7:7"))
    with pytest.raises(Exception, match="argument 'plan'"):
        compiled(**inputs)


def test_a_well_formed_pin_has_no_effect_on_the_cpu():
    # Documented: the CPU backends have no launch to pin; they check the pin's form only.
    inputs = make_mlp_down_inputs(2, 64, 128, torch.float32, "cpu")
    expected = clusterfusion.mlp_down_residual(**inputs)
    torch.testing.assert_close(clusterfusion.mlp_down_residual(**inputs, plan="64:2:4"), expected, rtol=0, atol=0)
    with clusterfusion.tuning(plan="184:8", pdl=False):
        torch.testing.assert_close(clusterfusion.mlp_down_residual(**inputs), expected, rtol=0, atol=0)
