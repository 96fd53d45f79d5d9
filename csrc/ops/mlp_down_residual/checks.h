// Argument checks of clusterfusion.mlp_down_residual shared by its backends.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "../../host/checks.h"

namespace clusterfusion::mlp_down_residual {

constexpr const char* kOp = "clusterfusion.mlp_down_residual";

// out[m, n] = x[m, k] @ weight[n, k]^T (+ bias) + residuals: m tokens, n outputs
// (hidden), k the reduction (ffn).
struct Shape {
  int64_t m;
  int64_t n;
  int64_t k;
};

inline Shape check_args(const at::Tensor& hidden_states, const at::Tensor& attn_output,
                        const at::Tensor& mlp_intermediate, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(weight.dim() == 2, kOp,
                    ": argument 'weight' must be 2-D [hidden, ffn] (HuggingFace's "
                    "dense_4h_to_h.weight); got shape ",
                    weight.sizes());
  const int64_t n = weight.size(0);
  const int64_t k = weight.size(1);
  TORCH_CHECK_VALUE(n > 0 && k > 0, kOp, ": argument 'weight' must be non-empty; got shape ", weight.sizes());
  // A transposed weight swaps the two sizes the activations carry: say so, rather
  // than blame the activations.
  const bool transposed = n != k && hidden_states.dim() >= 1 && mlp_intermediate.dim() >= 1 &&
                          hidden_states.size(-1) == k && mlp_intermediate.size(-1) == n;
  TORCH_CHECK_VALUE(!transposed, kOp, ": argument 'weight' looks transposed: it is ", weight.sizes(),
                    " while hidden_states is [..., ", k, "] and mlp_intermediate [..., ", n,
                    "]; pass HuggingFace's dense_4h_to_h.weight as stored, [hidden, ffn] = [", k, ", ", n, "]");
  check_residuals(kOp, hidden_states, attn_output, n, "weight.shape[0]");
  const int64_t m = hidden_states.numel() / n;
  TORCH_CHECK_VALUE(mlp_intermediate.dim() >= 1 && mlp_intermediate.size(-1) == k &&
                        mlp_intermediate.numel() / k == m,
                    kOp, ": argument 'mlp_intermediate' must have shape [", k, "] or [..., ", k, "] with ", m,
                    " row(s) like hidden_states (ffn = weight.shape[1]); got shape ", mlp_intermediate.sizes());
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == n, kOp, ": argument 'bias' must have shape [", n,
                      "]; got shape ", bias->sizes());
  }
  check_like(kOp, {"weight", &weight},
             {{"hidden_states", &hidden_states},
              {"attn_output", &attn_output},
              {"mlp_intermediate", &mlp_intermediate},
              {"bias", bias.has_value() ? &*bias : nullptr}});
  return {m, n, k};
}

}  // namespace clusterfusion::mlp_down_residual
