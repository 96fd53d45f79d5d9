"""PDL-fault chain probe, for the diagnostic build (scripts/pdl_probe/run.sh): chains
of attention blocks (each output feeds the next) with each CF_DIAG variant, against the
same inputs in stream order. The kernels are deterministic, so any bitwise difference
is the fault. Usage: python3 chain_probe.py [TRIALS]"""

import math
import os
import sys
import time

import torch

import clusterfusion  # noqa: F401  (registers the ops)
from clusterfusion import _C

SHAPES = {"6.9b": (4096, 32, 32), "2.8b": (2560, 32, 20)}

def run(flags, inputs, kc, vc):
    os.environ["CF_DIAG"] = flags
    out = torch.ops.clusterfusion.attention_block(inputs["h"], *inputs["w"], inputs["cos"], inputs["sin"], kc, vc,
                                                  inputs["pos"], None, 1e-5, plan="auto", pdl=True)
    return out, _C._diag_qkv()

def probe(shape, position, variant, trials, max_len=4096, chain=1):
    hidden, heads, rot = SHAPES[shape]
    hd = hidden // heads
    g = torch.Generator("cuda").manual_seed(position)
    rnd = lambda *s, scale=1.0: (torch.randn(*s, generator=g, device="cuda") * scale).half()
    w = (rnd(hidden, scale=0.2) + 1, rnd(hidden, scale=0.2), rnd(3 * hidden, hidden, scale=1 / math.sqrt(hidden)),
         rnd(3 * hidden, scale=0.2), rnd(hidden, hidden, scale=1 / math.sqrt(hidden)), rnd(hidden, scale=0.2))
    caches = [(rnd(1, heads, max_len, hd), rnd(1, heads, max_len, hd)) for _ in range(chain)]
    copies = [(k.clone(), v.clone()) for k, v in caches]
    cos, sin = rnd(1, 1, rot).float().cos().half(), rnd(1, 1, rot).float().sin().half()
    pos = torch.tensor(position, device="cuda")
    bad = {"qkv": 0, "row": 0, "out": 0}
    worst = 0.0
    for t in range(trials):
        h = rnd(1, 1, hidden)
        # the reference chain in stream order, then the chain under test on copies of the caches
        ref, ref_qkv, x = [], [], h
        for kc, vc in caches:
            o, q = run("snap_qkv", dict(h=x, w=w, cos=cos, sin=sin, pos=pos), kc, vc)
            ref.append(o); ref_qkv.append(q); x = o + x
        got, got_qkv, x = [], [], h
        for kc, vc in copies:
            o, q = run("snap_qkv," + variant, dict(h=x, w=w, cos=cos, sin=sin, pos=pos), kc, vc)
            got.append(o); got_qkv.append(q); x = o + x
        torch.cuda.synchronize()
        for i in range(chain):
            if not torch.equal(ref_qkv[i], got_qkv[i]):
                bad["qkv"] += 1
                worst = max(worst, (ref_qkv[i].float() - got_qkv[i].float()).abs().max().item())
            rows_equal = torch.equal(caches[i][0][:, :, position], copies[i][0][:, :, position]) and \
                torch.equal(caches[i][1][:, :, position], copies[i][1][:, :, position])
            bad["row"] += not rows_equal
            bad["out"] += not torch.equal(ref[i], got[i])
    os.environ["CF_DIAG"] = ""
    return bad, worst

if __name__ == "__main__":
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    print(torch.cuda.get_device_name(), flush=True)
    variants = ["", "attn_pdl", "attn_pdl,cluster_acquire", "attn_pdl,skip_exit_wait"]
    for shape, position, chain in [("6.9b", 4095, 1), ("6.9b", 1000, 1), ("6.9b", 4095, 8), ("2.8b", 4095, 8)]:
        for variant in variants:
            t0 = time.time()
            bad, worst = probe(shape, position, variant, trials, chain=chain)
            print(f"{shape} pos {position} chain {chain} variant {variant or 'stream-order':28s} calls {trials * chain:5d} "
                  f"qkv-bad {bad['qkv']:4d} row-bad {bad['row']:4d} out-bad {bad['out']:4d} worst {worst:.3g} "
                  f"({time.time() - t0:.1f} s)", flush=True)
