import torch, clusterfusion
h = torch.randn(4, 2560, device="cuda", dtype=torch.bfloat16)
w = torch.randn(2560, 10240, device="cuda", dtype=torch.bfloat16)
x = torch.randn(4, 10239, device="cuda", dtype=torch.bfloat16)
try:
    clusterfusion.mlp_down_residual(h, h, x, w, None)
except ValueError as e:
    print("raised OK:", e)
