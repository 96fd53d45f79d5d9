"""Runs the trace build's layer kernel and prints where its time goes: for each phase
stamp (apply.py), the spread over CTAs of the time since the earliest CTA started, for
the CTAs with a head and those without. Eager launches, one layer each of 8 distinct
layers chained, the last one's stamps; contexts 128 and 1024.

    CF_TRACE=1 PYTHONPATH=<trace build> python3 scripts/layer_trace/trace.py [SHAPE ...]
"""
import statistics
import sys

import torch

import clusterfusion
from clusterfusion import _C

SHAPES = {"2.8b": (2560, 32, 10240, 20), "6.9b": (4096, 32, 16384, 32)}
PHASES = {0: "consumers start", 1: "LayerNorms, cluster up", 2: "QKV tiles", 5: "q, k, v partials in",
          6: "attention merged", 7: "dense tiles", 3: "GELU(up)", 4: "down tiles", 8: "partial published",
          9: "every partial in", 10: "outputs written", 14: "producer start", 15: "last tile issued"}
LAYERS, MAX_LEN = 8, 2048


def rnd(*size, scale=1.0, shift=0.0):
    return (torch.randn(*size, device="cuda") * scale + shift).half()


def layer(hidden, heads, ffn):
    hd = hidden // heads
    return dict(
        attn_ln_weight=rnd(hidden, scale=0.2, shift=1.0), attn_ln_bias=rnd(hidden, scale=0.2),
        qkv_weight=rnd(3 * hidden, hidden, scale=hidden**-0.5), qkv_bias=rnd(3 * hidden, scale=0.2),
        dense_weight=rnd(hidden, hidden, scale=hidden**-0.5), dense_bias=rnd(hidden, scale=0.2),
        mlp_ln_weight=rnd(hidden, scale=0.2, shift=1.0), mlp_ln_bias=rnd(hidden, scale=0.2),
        up_weight=rnd(ffn, hidden, scale=hidden**-0.5), up_bias=rnd(ffn, scale=0.2),
        down_weight=rnd(hidden, ffn, scale=0.5 * ffn**-0.5), down_bias=rnd(hidden, scale=0.1),
        key_cache=rnd(1, heads, MAX_LEN, hd), value_cache=rnd(1, heads, MAX_LEN, hd),
    )


def main() -> int:
    shapes = sys.argv[1:] or list(SHAPES)
    print(f"layer trace on {torch.cuda.get_device_name()}")
    for name in shapes:
        hidden, heads, ffn, rotary = SHAPES[name]
        layers = [layer(hidden, heads, ffn) for _ in range(LAYERS)]
        plan = clusterfusion.gpt_neox_layer_plan(layers[0]["qkv_weight"], layers[0]["up_weight"], heads)
        has_head = torch.tensor([w["head"] >= 0 for w in plan["work"]])
        print(f"\n{name}: {plan['ctas']} CTAs in clusters of {plan['cluster_size']}, {plan['stages']} stages, "
              f"{plan['smem_bytes']} B of shared memory")
        for context in (128, 1024):
            position = context - 1
            angles = position / 10000.0 ** (torch.arange(0, rotary, 2, dtype=torch.float64) / rotary)
            cos = torch.cat([angles, angles]).cos().half().cuda()
            sin = torch.cat([angles, angles]).sin().half().cuda()
            cache_position = torch.tensor([position], device="cuda")
            with torch.no_grad():
                for _ in range(3):
                    x = rnd(1, 1, hidden, shift=0.3)
                    for weights in layers:
                        x = clusterfusion.gpt_neox_layer(x, **{k: v for k, v in weights.items() if "cache" not in k},
                                                         cos=cos, sin=sin, key_cache=weights["key_cache"],
                                                         value_cache=weights["value_cache"],
                                                         cache_position=cache_position, layer_plan="one_launch")
            torch.cuda.synchronize()
            stamps = _C._layer_trace().cpu().double()
            start = min(stamps[:, 14].min().item(), stamps[:, 0].min().item())
            print(f"  context {context}: kernel {(stamps[:, 10].max().item() - start) / 1e3:.1f} us "
                  f"(first stamp to last output); us since the first CTA started, min / median / max")
            for k, what in PHASES.items():
                for label, rows in (("head", has_head), ("no head", ~has_head)):
                    values = [(t - start) / 1e3 for t in stamps[rows, k].tolist() if t > 0]
                    if values:
                        print(f"    {k:>2} {what:<24} {label:<8} {min(values):7.1f} {statistics.median(values):7.1f} "
                              f"{max(values):7.1f}")
        del layers
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
