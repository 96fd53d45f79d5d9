// A projection (bias_projection_kernels.h) run from tensors, for the block ops.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "bias_projection_kernels.h"
#include "plan.h"

namespace clusterfusion::gemv {

// The plan for `m` tokens against `weight` ([n, k]).
const LaunchPlan& projection_plan(const char* op, Activation activation, const at::Tensor& weight, int64_t m,
                                  const PlanOverride& pin);

// out = activation(x @ weight.T + bias) on the current stream. x: [m, k]
// contiguous and 16-byte aligned, m <= Tile::kMaxM; weight streamable (checked
// by the caller); bias: [n] contiguous or absent; out: [m, n] contiguous.
void run_bias_projection(const char* op, Activation activation, const at::Tensor& x, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, const at::Tensor& out, const PlanOverride& pin,
                         bool pdl);

}  // namespace clusterfusion::gemv
