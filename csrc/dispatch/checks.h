// Argument checks shared by every backend of clusterfusion::mlp_down_residual.
// Each failure names the argument, what it got and what it needs, and raises
// ValueError (shape, device) or TypeError (dtype) in Python.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <optional>
#include <string>

namespace clusterfusion {

// out[rows, hidden] = x[rows, ffn] @ weight[hidden, ffn]^T (+ bias) + residuals.
struct MlpDownShape {
  int64_t rows;
  int64_t hidden;
  int64_t ffn;
};

// The message `check` raises, or "" when it passes: lets a backend say whether
// it would take an argument without running the op.
template <typename Check>
std::string failure_message(Check&& check) {
  try {
    check();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return {};
}

inline void check_dtype_allowed(const at::Tensor& weight,
                                std::initializer_list<at::ScalarType> allowed, const char* backend) {
  for (at::ScalarType t : allowed) {
    if (weight.scalar_type() == t) return;
  }
  std::string names;
  for (at::ScalarType t : allowed) names += (names.empty() ? "" : ", ") + std::string(c10::toString(t));
  TORCH_CHECK_TYPE(false, "clusterfusion.mlp_down_residual: argument 'weight' has dtype ",
                   weight.scalar_type(), "; the ", backend, " implementation supports ", names);
}

inline MlpDownShape check_mlp_down_residual_args(const at::Tensor& hidden_states,
                                                 const at::Tensor& attn_output,
                                                 const at::Tensor& mlp_intermediate,
                                                 const at::Tensor& weight,
                                                 const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "clusterfusion.mlp_down_residual";
  TORCH_CHECK_VALUE(weight.dim() == 2, op,
                    ": argument 'weight' must be 2-D [hidden, ffn] (HuggingFace's "
                    "dense_4h_to_h.weight); got shape ",
                    weight.sizes());
  const int64_t hidden = weight.size(0);
  const int64_t ffn = weight.size(1);
  TORCH_CHECK_VALUE(hidden > 0 && ffn > 0, op, ": argument 'weight' must be non-empty; got shape ",
                    weight.sizes());
  TORCH_CHECK_VALUE(hidden_states.dim() >= 1 && hidden_states.size(-1) == hidden, op,
                    ": argument 'hidden_states' must have shape [..., ", hidden,
                    "] (hidden = weight.shape[0]); got shape ", hidden_states.sizes());
  TORCH_CHECK_VALUE(attn_output.sizes() == hidden_states.sizes(), op,
                    ": argument 'attn_output' must have the shape of hidden_states ",
                    hidden_states.sizes(), "; got shape ", attn_output.sizes());
  const int64_t rows = hidden_states.numel() / hidden;
  TORCH_CHECK_VALUE(mlp_intermediate.dim() >= 1 && mlp_intermediate.size(-1) == ffn &&
                        mlp_intermediate.numel() / ffn == rows,
                    op, ": argument 'mlp_intermediate' must have shape [", ffn, "] or [..., ", ffn,
                    "] with ", rows, " row(s) like hidden_states (ffn = weight.shape[1]); got shape ",
                    mlp_intermediate.sizes());
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == hidden, op,
                      ": argument 'bias' must have shape [", hidden, "]; got shape ", bias->sizes());
  }

  const std::pair<const char*, const at::Tensor*> others[] = {
      {"hidden_states", &hidden_states},
      {"attn_output", &attn_output},
      {"mlp_intermediate", &mlp_intermediate},
      {"bias", bias.has_value() ? &*bias : nullptr}};
  for (const auto& [name, t] : others) {
    if (t == nullptr) continue;
    TORCH_CHECK_TYPE(t->scalar_type() == weight.scalar_type(), op, ": argument '", name,
                     "' has dtype ", t->scalar_type(), "; expected ", weight.scalar_type(),
                     " like 'weight'");
    TORCH_CHECK_VALUE(t->device() == weight.device(), op, ": argument '", name, "' is on ",
                      t->device(), "; expected ", weight.device(), " like 'weight'");
  }
  return {rows, hidden, ffn};
}

}  // namespace clusterfusion
