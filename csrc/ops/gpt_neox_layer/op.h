// clusterfusion::gpt_neox_layer's arguments (the struct every backend takes),
// its flat signature and its dispatcher handle, for the autograd kernel's redispatch.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

namespace clusterfusion::gpt_neox_layer {

constexpr const char* kOp = "clusterfusion.gpt_neox_layer";

// In schema order (registration.cpp).
struct Args {
  const at::Tensor& hidden_states;
  const at::Tensor& attn_ln_weight;
  const std::optional<at::Tensor>& attn_ln_bias;
  const at::Tensor& qkv_weight;
  const std::optional<at::Tensor>& qkv_bias;
  const at::Tensor& dense_weight;
  const std::optional<at::Tensor>& dense_bias;
  const at::Tensor& mlp_ln_weight;
  const std::optional<at::Tensor>& mlp_ln_bias;
  const at::Tensor& up_weight;
  const std::optional<at::Tensor>& up_bias;
  const at::Tensor& down_weight;
  const std::optional<at::Tensor>& down_bias;
  const at::Tensor& cos;
  const at::Tensor& sin;
  const at::Tensor& key_cache;
  const at::Tensor& value_cache;
  const at::Tensor& cache_position;
  const std::optional<at::Tensor>& attention_mask;
  double eps;
  c10::string_view layer_plan;
  c10::string_view attention_plan;
  c10::string_view block_plan;
  bool pdl;
};

using OpSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                               const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
                               const std::optional<at::Tensor>&, const at::Tensor&, const std::optional<at::Tensor>&,
                               const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
                               const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
                               const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const std::optional<at::Tensor>&, double, c10::string_view, c10::string_view,
                               c10::string_view, bool);

inline const c10::TypedOperatorHandle<OpSignature>& op_handle() {
  static const auto handle =
      c10::Dispatcher::singleton().findSchemaOrThrow("clusterfusion::gpt_neox_layer", "").typed<OpSignature>();
  return handle;
}

}  // namespace clusterfusion::gpt_neox_layer
