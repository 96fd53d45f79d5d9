// clusterfusion::mlp_down_residual's arguments (the struct its backends take),
// its flat signature and its dispatcher handle, for code that calls the op from
// C++ (the original entry points, the autograd formula).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

namespace clusterfusion::mlp_down_residual {

// In schema order (registration.cpp).
struct Args {
  const at::Tensor& hidden_states;
  const at::Tensor& attn_output;
  const at::Tensor& mlp_intermediate;
  const at::Tensor& weight;
  const std::optional<at::Tensor>& bias;
  c10::string_view plan;
  bool pdl;
};

using OpSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const std::optional<at::Tensor>&, c10::string_view, bool);

inline const c10::TypedOperatorHandle<OpSignature>& op_handle() {
  static const auto handle =
      c10::Dispatcher::singleton().findSchemaOrThrow("clusterfusion::mlp_down_residual", "").typed<OpSignature>();
  return handle;
}

}  // namespace clusterfusion::mlp_down_residual
