// clusterfusion::mlp_block_residual's arguments (the struct every backend
// takes), its flat signature and its dispatcher handle, for the autograd kernel's redispatch.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

namespace clusterfusion::mlp_block_residual {

// In schema order (registration.cpp).
struct Args {
  const at::Tensor& hidden_states;
  const at::Tensor& attn_output;
  const at::Tensor& ln_weight;
  const std::optional<at::Tensor>& ln_bias;
  const at::Tensor& up_weight;
  const std::optional<at::Tensor>& up_bias;
  const at::Tensor& down_weight;
  const std::optional<at::Tensor>& down_bias;
  double eps;
  c10::string_view plan;
  bool pdl;
};

using OpSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const std::optional<at::Tensor>&, const at::Tensor&, const std::optional<at::Tensor>&,
                               const at::Tensor&, const std::optional<at::Tensor>&, double, c10::string_view, bool);

inline const c10::TypedOperatorHandle<OpSignature>& op_handle() {
  static const auto handle =
      c10::Dispatcher::singleton().findSchemaOrThrow("clusterfusion::mlp_block_residual", "").typed<OpSignature>();
  return handle;
}

}  // namespace clusterfusion::mlp_block_residual
