"""PDL-fault call probe, for the diagnostic build (scripts/pdl_probe/run.sh): the
attention block called as the tests call it (fresh caches, position and
rotary tables made just before the call, float64 work in between, no synchronization
between trials), with the attention kernel as the QKV projection's programmatic
dependent. Checks per call: the new value row equals the QKV output's v part (as
snapshotted after the call in stream order), and the QKV output is within rounding of
an fp32 reference (a missing split-K partial is ~0.3)."""
import math
import os
import sys

import torch
import torch.nn.functional as F

from clusterfusion import _C

def run(trials, shape, flags):
    hidden, heads, rot = {"6.9b": (4096, 32, 32), "2.8b": (2560, 32, 20)}[shape]
    hd, max_len = hidden // heads, 4096
    g = torch.Generator("cuda").manual_seed(7)
    rnd = lambda *s, scale=1.0, shift=0.0: (torch.randn(*s, generator=g, device="cuda") * scale + shift).half()
    w = (rnd(hidden, scale=0.2, shift=1.0), rnd(hidden, scale=0.2), rnd(3 * hidden, hidden, scale=1 / math.sqrt(hidden)),
         rnd(3 * hidden, scale=0.2), rnd(hidden, hidden, scale=1 / math.sqrt(hidden)), rnd(hidden, scale=0.2))
    kept = []
    os.environ["CF_DIAG"] = flags
    for t in range(trials):
        position = [1000, 2047, 4095][t % 3]
        h = rnd(1, 1, hidden, shift=0.3)
        cos, sin = rnd(1, 1, rot), rnd(1, 1, rot)
        kc, vc = rnd(1, heads, max_len, hd), rnd(1, heads, max_len, hd)
        pos = torch.tensor(position, device="cuda")
        (w[2][:64].double() @ w[2][:64].double().T).sum()  # float64 work in between, as the tests' reference
        torch.ops.clusterfusion.attention_block(h, *w, cos, sin, kc, vc, pos, None, 1e-5, plan="auto", pdl=True)
        kept.append((h, _C._diag_qkv(), vc[0, :, position].clone()))
    os.environ["CF_DIAG"] = ""
    torch.cuda.synchronize()
    row_bad = qkv_bad = 0
    worst = 0.0
    for h, qkv, vrow in kept:
        ref = F.linear(F.layer_norm(h.float().reshape(1, hidden), (hidden,), w[0].float(), w[1].float()), w[2].float(), w[3].float())
        err = (qkv.float() - ref).abs().max().item()
        worst = max(worst, err)
        qkv_bad += err > 0.05
        row_bad += not torch.equal(vrow, qkv.view(heads, 3, hd)[:, 2])
    return row_bad, qkv_bad, worst

if __name__ == "__main__":
    trials = int(sys.argv[1])
    for shape in ("6.9b", "2.8b"):
        for flags in ("snap_qkv", "snap_qkv,attn_pdl", "snap_qkv,attn_pdl,fence_wait", "snap_qkv,attn_pdl,cg_qkv",
                      "snap_qkv,attn_pdl,cluster_acquire", "snap_qkv,attn_pdl,skip_exit_wait"):
            row_bad, qkv_bad, worst = run(trials, shape, flags)
            print(f"probe2 {shape} {flags:18s} calls {trials}: value row != QKV output: {row_bad}; "
                  f"QKV output off its fp32 reference by > 0.05: {qkv_bad} (worst {worst:.3g})", flush=True)
