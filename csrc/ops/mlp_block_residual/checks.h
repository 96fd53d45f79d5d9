// Argument checks of clusterfusion.mlp_block_residual shared by its backends.
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>
#include <optional>

#include "../../host/checks.h"
#include "op.h"

namespace clusterfusion::mlp_block_residual {

constexpr const char* kOp = "clusterfusion.mlp_block_residual";

// m tokens, hidden features, ffn intermediate features.
struct Shape {
  int64_t m;
  int64_t hidden;
  int64_t ffn;
};

inline Shape check_args(const Args& a) {
  TORCH_CHECK_VALUE(a.up_weight.dim() == 2, kOp,
                    ": argument 'up_weight' must be 2-D [ffn, hidden] (HuggingFace's dense_h_to_4h.weight); got "
                    "shape ",
                    a.up_weight.sizes());
  const int64_t ffn = a.up_weight.size(0);
  const int64_t hidden = a.up_weight.size(1);
  TORCH_CHECK_VALUE(ffn > 0 && hidden > 0, kOp, ": argument 'up_weight' must be non-empty; got shape ",
                    a.up_weight.sizes());
  TORCH_CHECK_VALUE(a.down_weight.dim() == 2 && a.down_weight.size(0) == hidden && a.down_weight.size(1) == ffn, kOp,
                    ": argument 'down_weight' must have shape [", hidden, ", ", ffn,
                    "] ([hidden, ffn], HuggingFace's dense_4h_to_h.weight, matching up_weight's [ffn, hidden] = [", ffn,
                    ", ", hidden, "]); got shape ", a.down_weight.sizes());
  check_residuals(kOp, a.hidden_states, a.attn_output, hidden, "up_weight.shape[1]");
  check_vector(kOp, "ln_weight", a.ln_weight, hidden, "hidden");
  check_vector(kOp, "ln_bias", a.ln_bias, hidden, "hidden");
  check_vector(kOp, "up_bias", a.up_bias, ffn, "ffn");
  check_vector(kOp, "down_bias", a.down_bias, hidden, "hidden");
  TORCH_CHECK_VALUE(std::isfinite(a.eps) && a.eps >= 0, kOp, ": argument 'eps' must be finite and >= 0; got ", a.eps);
  auto optional = [](const std::optional<at::Tensor>& t) { return t.has_value() ? &*t : nullptr; };
  check_like(kOp, {"up_weight", &a.up_weight},
             {{"hidden_states", &a.hidden_states},
              {"attn_output", &a.attn_output},
              {"ln_weight", &a.ln_weight},
              {"ln_bias", optional(a.ln_bias)},
              {"up_bias", optional(a.up_bias)},
              {"down_weight", &a.down_weight},
              {"down_bias", optional(a.down_bias)}});
  return {a.hidden_states.numel() / hidden, hidden, ffn};
}

}  // namespace clusterfusion::mlp_block_residual
