// Argument checks of clusterfusion.mlp_block_residual shared by its backends.
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>
#include <optional>

#include "../../host/checks.h"

namespace clusterfusion::mlp_block_residual {

constexpr const char* kOp = "clusterfusion.mlp_block_residual";

// m tokens, hidden features, ffn intermediate features.
struct Shape {
  int64_t m;
  int64_t hidden;
  int64_t ffn;
};

inline Shape check_args(const at::Tensor& hidden_states, const at::Tensor& attn_output, const at::Tensor& ln_weight,
                        const std::optional<at::Tensor>& ln_bias, const at::Tensor& up_weight,
                        const std::optional<at::Tensor>& up_bias, const at::Tensor& down_weight,
                        const std::optional<at::Tensor>& down_bias, double eps) {
  TORCH_CHECK_VALUE(up_weight.dim() == 2, kOp,
                    ": argument 'up_weight' must be 2-D [ffn, hidden] (HuggingFace's dense_h_to_4h.weight); got "
                    "shape ",
                    up_weight.sizes());
  const int64_t ffn = up_weight.size(0);
  const int64_t hidden = up_weight.size(1);
  TORCH_CHECK_VALUE(ffn > 0 && hidden > 0, kOp, ": argument 'up_weight' must be non-empty; got shape ",
                    up_weight.sizes());
  TORCH_CHECK_VALUE(down_weight.dim() == 2 && down_weight.size(0) == hidden && down_weight.size(1) == ffn, kOp,
                    ": argument 'down_weight' must have shape [", hidden, ", ", ffn,
                    "] ([hidden, ffn], HuggingFace's dense_4h_to_h.weight, matching up_weight's [ffn, hidden] = [",
                    ffn, ", ", hidden, "]); got shape ", down_weight.sizes());
  check_residuals(kOp, hidden_states, attn_output, hidden, "up_weight.shape[1]");
  check_vector(kOp, "ln_weight", ln_weight, hidden, "hidden");
  check_vector(kOp, "ln_bias", ln_bias, hidden, "hidden");
  check_vector(kOp, "up_bias", up_bias, ffn, "ffn");
  check_vector(kOp, "down_bias", down_bias, hidden, "hidden");
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, kOp, ": argument 'eps' must be finite and >= 0; got ", eps);
  auto optional = [](const std::optional<at::Tensor>& t) { return t.has_value() ? &*t : nullptr; };
  check_like(kOp, {"up_weight", &up_weight},
             {{"hidden_states", &hidden_states},
              {"attn_output", &attn_output},
              {"ln_weight", &ln_weight},
              {"ln_bias", optional(ln_bias)},
              {"up_bias", optional(up_bias)},
              {"down_weight", &down_weight},
              {"down_bias", optional(down_bias)}});
  return {hidden_states.numel() / hidden, hidden, ffn};
}

}  // namespace clusterfusion::mlp_block_residual
