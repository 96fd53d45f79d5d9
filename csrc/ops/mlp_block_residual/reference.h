// The op computed with ATen, as HuggingFace's GPT-NeoX layer does it:
// hidden + attn + down(gelu(up(layer_norm(hidden)))). Serves the CPU backend,
// the CUDA backend for token counts beyond the fused kernels', and gradients.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "checks.h"

namespace clusterfusion::mlp_block_residual {

// Computed in `compute`, returned in hidden_states' dtype.
inline at::Tensor reference(const Args& a, at::ScalarType compute) {
  auto in = [&](const at::Tensor& t) { return t.to(compute); };
  auto in_opt = [&](const std::optional<at::Tensor>& t) {
    return t.has_value() ? std::optional<at::Tensor>(t->to(compute)) : std::nullopt;
  };
  const at::Tensor hidden = in(a.hidden_states);
  const at::Tensor normalized =
      at::layer_norm(hidden, {a.up_weight.size(1)}, in(a.ln_weight), in_opt(a.ln_bias), a.eps);
  const at::Tensor intermediate = at::gelu(at::linear(normalized, in(a.up_weight), in_opt(a.up_bias)));
  return (at::linear(intermediate, in(a.down_weight), in_opt(a.down_bias)) + in(a.attn_output) + hidden)
      .to(a.hidden_states.scalar_type());
}

// The composite every gradient runs: checked, computed in the weights' dtype.
inline at::Tensor composite(const Args& a) {
  check_args(a);
  return reference(a, a.up_weight.scalar_type());
}

}  // namespace clusterfusion::mlp_block_residual
