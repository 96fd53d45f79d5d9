// The op computed with ATen, as HuggingFace's GPT-NeoX layer does it:
// linear(x, W, b) + attn_output + hidden_states. Serves the CPU backend and the
// CUDA backend for row counts beyond the fused kernel's.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace clusterfusion {

inline at::Tensor mlp_down_residual_reference(const at::Tensor& hidden_states,
                                              const at::Tensor& attn_output,
                                              const at::Tensor& mlp_intermediate,
                                              const at::Tensor& weight,
                                              const std::optional<at::Tensor>& bias) {
  const int64_t hidden = weight.size(0);
  const int64_t ffn = weight.size(1);
  const at::Tensor x = mlp_intermediate.reshape({-1, ffn});
  at::Tensor out = at::linear(x, weight, bias);
  out.add_(attn_output.reshape({-1, hidden})).add_(hidden_states.reshape({-1, hidden}));
  return out.reshape(hidden_states.sizes());
}

}  // namespace clusterfusion
