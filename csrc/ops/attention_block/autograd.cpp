// Autograd of clusterfusion::attention_block, for every backend: when a gradient
// is needed the op runs as its ATen composite (reference.h, which reads the
// position on the host), whose recorded graph gives HuggingFace's gradients;
// otherwise it redispatches below autograd to the fused kernels.
#include <ATen/core/grad_mode.h>
#include <torch/library.h>

#include <initializer_list>

#include "op.h"
#include "reference.h"

namespace clusterfusion::attention_block {
namespace {

bool any_needs_grad(std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors) {
    if (t != nullptr && t->requires_grad()) return true;
  }
  return false;
}

at::Tensor attention_block_autograd(const at::Tensor& hidden_states, const at::Tensor& ln_weight,
                                    const std::optional<at::Tensor>& ln_bias, const at::Tensor& qkv_weight,
                                    const std::optional<at::Tensor>& qkv_bias, const at::Tensor& dense_weight,
                                    const std::optional<at::Tensor>& dense_bias, const at::Tensor& cos,
                                    const at::Tensor& sin, const at::Tensor& key_cache, const at::Tensor& value_cache,
                                    const at::Tensor& cache_position, const std::optional<at::Tensor>& attention_mask,
                                    double eps, c10::string_view plan, bool pdl) {
  auto optional = [](const std::optional<at::Tensor>& t) { return t.has_value() ? &*t : nullptr; };
  if (at::GradMode::is_enabled() &&
      any_needs_grad({&hidden_states, &ln_weight, optional(ln_bias), &qkv_weight, optional(qkv_bias), &dense_weight,
                      optional(dense_bias), &cos, &sin, &key_cache, &value_cache})) {
    const Shape shape = check_args(hidden_states, ln_weight, ln_bias, qkv_weight, qkv_bias, dense_weight, dense_bias,
                                   cos, sin, key_cache, value_cache, cache_position, attention_mask, eps);
    return reference(hidden_states, ln_weight, ln_bias, qkv_weight, qkv_bias, dense_weight, dense_bias, cos, sin,
                     key_cache, value_cache, cache_position, attention_mask, eps, shape, qkv_weight.scalar_type());
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return op_handle().call(hidden_states, ln_weight, ln_bias, qkv_weight, qkv_bias, dense_weight, dense_bias, cos, sin,
                          key_cache, value_cache, cache_position, attention_mask, eps, plan, pdl);
}

}  // namespace

TORCH_LIBRARY_IMPL(clusterfusion, Autograd, m) {
  m.impl("attention_block", &attention_block_autograd);
}

}  // namespace clusterfusion::attention_block
