// The fused MLP-down + residual kernel run from tensors, for this op's CUDA
// backend and for ops that end with it (the MLP block).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "gemv/plan.h"

namespace clusterfusion::mlp_down_residual {

// The plan for `m` tokens against `weight` ([hidden, ffn]).
const gemv::LaunchPlan& plan_of(const char* op, const at::Tensor& weight, int64_t m, const gemv::PlanOverride& pin);

// out = hidden + attn + x @ weight.T + bias, x: [m, ffn] contiguous and 16-byte
// aligned, m <= Tile::kMaxM; hidden, attn, out: [m, hidden] contiguous. Checked by the caller.
void run_down(const char* op, const at::Tensor& hidden, const at::Tensor& attn, const at::Tensor& x,
              const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& out,
              const gemv::PlanOverride& pin, bool pdl);

}  // namespace clusterfusion::mlp_down_residual
