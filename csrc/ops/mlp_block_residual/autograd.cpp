// Autograd of clusterfusion::mlp_block_residual, for every backend: when a
// gradient is needed the op runs as its ATen composite (reference.h), whose
// recorded graph gives exactly the gradients of the HuggingFace block;
// otherwise it redispatches below autograd to the fused kernels.
#include <ATen/core/grad_mode.h>
#include <torch/library.h>

#include "op.h"
#include "reference.h"

namespace clusterfusion::mlp_block_residual {
namespace {

bool needs_grad(const at::Tensor& t) { return t.requires_grad(); }
bool needs_grad(const std::optional<at::Tensor>& t) { return t.has_value() && t->requires_grad(); }

at::Tensor mlp_block_residual_autograd(const at::Tensor& hidden_states, const at::Tensor& attn_output,
                                       const at::Tensor& ln_weight, const std::optional<at::Tensor>& ln_bias,
                                       const at::Tensor& up_weight, const std::optional<at::Tensor>& up_bias,
                                       const at::Tensor& down_weight, const std::optional<at::Tensor>& down_bias,
                                       double eps, c10::string_view plan, bool pdl) {
  const bool grad = at::GradMode::is_enabled() &&
                    (needs_grad(hidden_states) || needs_grad(attn_output) || needs_grad(ln_weight) ||
                     needs_grad(ln_bias) || needs_grad(up_weight) || needs_grad(up_bias) ||
                     needs_grad(down_weight) || needs_grad(down_bias));
  if (grad) {
    return reference(hidden_states, attn_output, ln_weight, ln_bias, up_weight, up_bias, down_weight, down_bias, eps);
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return op_handle().call(hidden_states, attn_output, ln_weight, ln_bias, up_weight, up_bias, down_weight, down_bias,
                          eps, plan, pdl);
}

}  // namespace

TORCH_LIBRARY_IMPL(clusterfusion, Autograd, m) {
  m.impl("mlp_block_residual", &mlp_block_residual_autograd);
}

}  // namespace clusterfusion::mlp_block_residual
