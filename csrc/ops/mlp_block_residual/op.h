// The dispatcher handle of clusterfusion::mlp_block_residual, for the autograd
// kernel's redispatch.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

namespace clusterfusion::mlp_block_residual {

using OpSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const std::optional<at::Tensor>&, const at::Tensor&, const std::optional<at::Tensor>&,
                               const at::Tensor&, const std::optional<at::Tensor>&, double, c10::string_view, bool);

inline const c10::TypedOperatorHandle<OpSignature>& op_handle() {
  static const auto handle = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("clusterfusion::mlp_block_residual", "")
                                 .typed<OpSignature>();
  return handle;
}

}  // namespace clusterfusion::mlp_block_residual
