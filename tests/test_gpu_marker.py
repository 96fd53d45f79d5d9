"""The `gpu` marker's decision (conftest.gpu_skip_reason): the GPU tests run on a
card the build has code for (clusterfusion._C.CUDA_ARCHS), and skip on any other,
naming the card and the build's targets."""

from __future__ import annotations

import torch

import clusterfusion
import conftest
from conftest import gpu_skip_reason


def test_runs_where_the_build_has_code():
    assert gpu_skip_reason("NVIDIA H100 80GB HBM3", (9, 0), "sm_90a") is None
    assert gpu_skip_reason("NVIDIA GeForce RTX 5090", (12, 0), "sm_90a/sm_120a") is None


def test_skips_a_card_the_build_has_no_code_for():
    reason = gpu_skip_reason("NVIDIA GeForce RTX 5090", (12, 0), "sm_90a")
    assert reason == ("this build of clusterfusion has no code for NVIDIA GeForce RTX 5090 (compute capability 12.0); "
                      "it targets sm_90a")


def test_skips_a_card_older_than_the_kernels_and_one_newer_than_the_build():
    assert "NVIDIA A100-SXM4-80GB (compute capability 8.0)" in gpu_skip_reason("NVIDIA A100-SXM4-80GB", (8, 0),
                                                                                 "sm_90a/sm_120a")
    assert gpu_skip_reason("a card of 10.0", (10, 0), "sm_90a/sm_120a").endswith("it targets sm_90a/sm_120a")


def test_the_build_reports_its_targets():
    targets = clusterfusion._C.CUDA_ARCHS.split("/")
    assert targets and all(t.startswith("sm_") and t[3:].rstrip("a").isdigit() for t in targets), targets


def test_the_marker_skips_by_the_decision_here():
    if not torch.cuda.is_available():
        assert conftest._GPU_SKIP_REASON == "needs a CUDA GPU"
    assert conftest.gpu.args == (conftest._GPU_SKIP_REASON is not None,)
    assert conftest.gpu.kwargs["reason"] == (conftest._GPU_SKIP_REASON or "")
