// The op computed with ATen, as HuggingFace's GPT-NeoX layer does it:
// linear(x, W, b) + attn_output + hidden_states. Serves the CPU backend and the
// CUDA backend for token counts beyond the fused kernel's.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "op.h"

namespace clusterfusion::mlp_down_residual {

inline at::Tensor reference(const Args& a) {
  const int64_t n = a.weight.size(0);
  const int64_t k = a.weight.size(1);
  at::Tensor out = at::linear(a.mlp_intermediate.reshape({-1, k}), a.weight, a.bias);
  out.add_(a.attn_output.reshape({-1, n})).add_(a.hidden_states.reshape({-1, n}));
  return out.reshape(a.hidden_states.sizes());
}

}  // namespace clusterfusion::mlp_down_residual
