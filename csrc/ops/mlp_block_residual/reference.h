// The op computed with ATen, as HuggingFace's GPT-NeoX layer does it:
// hidden + attn + down(gelu(up(layer_norm(hidden)))). Serves the CPU backend,
// the CUDA backend for token counts beyond the fused kernels', and gradients.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace clusterfusion::mlp_block_residual {

inline at::Tensor reference(const at::Tensor& hidden_states, const at::Tensor& attn_output, const at::Tensor& ln_weight,
                            const std::optional<at::Tensor>& ln_bias, const at::Tensor& up_weight,
                            const std::optional<at::Tensor>& up_bias, const at::Tensor& down_weight,
                            const std::optional<at::Tensor>& down_bias, double eps) {
  const at::Tensor normalized = at::layer_norm(hidden_states, {up_weight.size(1)}, ln_weight, ln_bias, eps);
  const at::Tensor intermediate = at::gelu(at::linear(normalized, up_weight, up_bias));
  return at::linear(intermediate, down_weight, down_bias) + attn_output + hidden_states;
}

}  // namespace clusterfusion::mlp_block_residual
