"""Pinned launch plans: every layout the planner may pick computes the same function.

The planner chooses one plan per device and shape, so the correctness tests
only exercise the plans the test card leads to. Here CLUSTERFUSION_PLAN pins
others, each in a fresh process (the variable is read once per process): odd
cluster sizes, tiles of an odd multiple of 8 rows, row shares that do not divide
the tile, tiles that overhang the matrix, and CTAs left without reduction work.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import gpu

TESTS_DIR = Path(__file__).resolve().parent

# BLOCK_N:CLUSTER:STAGES
PINNED_PLANS = [
    "8:1:2",     # narrowest tile (half a warp's rows), no cluster reduction
    "40:2:32",   # an odd multiple of 8 rows: the last warp drops half its rows; deepest ring
    "32:3:3",    # odd cluster size: ranks own 11, 11 and 10 rows
    "48:7:2",    # on ffn=520 (9 chunks) two of the seven CTAs get no chunk
    "160:8:4",   # on hidden=4104 the last tile overhangs: two ranks own no row
    "256:5:16",  # stages cut to what fits in shared memory
]

CHECK_SCRIPT = """
import sys
import torch
import clusterfusion
from conftest import TOLERANCE, call_poisoned, make_inputs, reference, rel_err

failures = []
for hidden, ffn in [(2560, 10240), (4104, 1032), (1000, 520)]:
    for rows in (1, 3, 16):
        for dtype in (torch.float16, torch.bfloat16):
            inputs = make_inputs(rows, hidden, ffn, dtype, "cuda")
            err = rel_err(call_poisoned(clusterfusion.mlp_down_residual, inputs), reference(**inputs))
            if not err < TOLERANCE[dtype]:
                failures.append(f"{hidden}x{ffn} rows={rows} {dtype}: rel err {err:.3g}")
print("\\n".join(failures) or "all passed")
sys.exit(1 if failures else 0)
"""


@gpu
@pytest.mark.parametrize("plan", PINNED_PLANS)
def test_pinned_plan_matches_float64(plan):
    env = dict(os.environ, CLUSTERFUSION_PLAN=plan, CLUSTERFUSION_VERBOSE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", CHECK_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    block_n, cluster, _ = plan.split(":")
    chosen = [line for line in result.stderr.splitlines() if line.startswith("[clusterfusion]")]
    assert chosen, "the planner did not report its plans: " + result.stderr
    for line in chosen:
        assert f"block_n={block_n} cluster={cluster} " in line, line
