// Argument checks of clusterfusion.mlp_down_residual shared by its backends.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "../../host/checks.h"
#include "op.h"

namespace clusterfusion::mlp_down_residual {

constexpr const char* kOp = "clusterfusion.mlp_down_residual";

// out[m, n] = x[m, k] @ weight[n, k]^T (+ bias) + residuals: m tokens, n outputs
// (hidden), k the reduction (ffn).
struct Shape {
  int64_t m;
  int64_t n;
  int64_t k;
};

inline Shape check_args(const Args& a) {
  TORCH_CHECK_VALUE(a.weight.dim() == 2, kOp,
                    ": argument 'weight' must be 2-D [hidden, ffn] (HuggingFace's "
                    "dense_4h_to_h.weight); got shape ",
                    a.weight.sizes());
  const int64_t n = a.weight.size(0);
  const int64_t k = a.weight.size(1);
  TORCH_CHECK_VALUE(n > 0 && k > 0, kOp, ": argument 'weight' must be non-empty; got shape ", a.weight.sizes());
  // A transposed weight swaps the two sizes the activations carry: say so, rather
  // than blame the activations.
  const bool transposed = n != k && a.hidden_states.dim() >= 1 && a.mlp_intermediate.dim() >= 1 &&
                          a.hidden_states.size(-1) == k && a.mlp_intermediate.size(-1) == n;
  TORCH_CHECK_VALUE(!transposed, kOp, ": argument 'weight' looks transposed: it is ", a.weight.sizes(),
                    " while hidden_states is [..., ", k, "] and mlp_intermediate [..., ", n,
                    "]; pass HuggingFace's dense_4h_to_h.weight as stored, [hidden, ffn] = [", k, ", ", n, "]");
  check_residuals(kOp, a.hidden_states, a.attn_output, n, "weight.shape[0]");
  const int64_t m = a.hidden_states.numel() / n;
  TORCH_CHECK_VALUE(
      a.mlp_intermediate.dim() >= 1 && a.mlp_intermediate.size(-1) == k && a.mlp_intermediate.numel() / k == m, kOp,
      ": argument 'mlp_intermediate' must have shape [", k, "] or [..., ", k, "] with ", m,
      " row(s) like hidden_states (ffn = weight.shape[1]); got shape ", a.mlp_intermediate.sizes());
  if (a.bias.has_value()) {
    TORCH_CHECK_VALUE(a.bias->dim() == 1 && a.bias->size(0) == n, kOp, ": argument 'bias' must have shape [", n,
                      "]; got shape ", a.bias->sizes());
  }
  check_like(kOp, {"weight", &a.weight},
             {{"hidden_states", &a.hidden_states},
              {"attn_output", &a.attn_output},
              {"mlp_intermediate", &a.mlp_intermediate},
              {"bias", a.bias.has_value() ? &*a.bias : nullptr}});
  return {m, n, k};
}

}  // namespace clusterfusion::mlp_down_residual
