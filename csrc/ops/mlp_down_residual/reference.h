// The op computed with ATen, as HuggingFace's GPT-NeoX layer does it:
// linear(x, W, b) + attn_output + hidden_states. Serves the CPU backend and the
// CUDA backend for token counts beyond the fused kernel's.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace clusterfusion::mlp_down_residual {

inline at::Tensor reference(const at::Tensor& hidden_states, const at::Tensor& attn_output,
                            const at::Tensor& mlp_intermediate, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias) {
  const int64_t n = weight.size(0);
  const int64_t k = weight.size(1);
  at::Tensor out = at::linear(mlp_intermediate.reshape({-1, k}), weight, bias);
  out.add_(attn_output.reshape({-1, n})).add_(hidden_states.reshape({-1, n}));
  return out.reshape(hidden_states.sizes());
}

}  // namespace clusterfusion::mlp_down_residual
