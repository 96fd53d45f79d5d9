// clusterfusion::gpt_neox_layer: GPT-NeoX's parallel-residual decode layer for one
// new token, x + attention(ln1(x)) + mlp(ln2(x)), today composed of the two block
// ops (attention_block, then mlp_block_residual with its output as attn_output).
// Registered as CompositeImplicitAutograd, so every backend, gradients and
// torch.compile take the blocks' kernels and fakes. The one-launch kernel of issue
// #24 (docs/design.md) will change that to the blocks' pattern: CPU and CUDA
// kernels, the generic Autograd kernel (host/flat_kernel.h) and a fake.
#include <torch/library.h>

#include <string>

#include "../../host/checks.h"
#include "../attention_block/checks.h"
#include "../mlp_block_residual/checks.h"
#include "gemv/plan.h"

namespace clusterfusion::gpt_neox_layer {
namespace {

constexpr const char* kOp = "clusterfusion.gpt_neox_layer";

at::Tensor gpt_neox_layer(const at::Tensor& hidden_states, const at::Tensor& attn_ln_weight,
                          const std::optional<at::Tensor>& attn_ln_bias, const at::Tensor& qkv_weight,
                          const std::optional<at::Tensor>& qkv_bias, const at::Tensor& dense_weight,
                          const std::optional<at::Tensor>& dense_bias, const at::Tensor& mlp_ln_weight,
                          const std::optional<at::Tensor>& mlp_ln_bias, const at::Tensor& up_weight,
                          const std::optional<at::Tensor>& up_bias, const at::Tensor& down_weight,
                          const std::optional<at::Tensor>& down_bias, const at::Tensor& cos, const at::Tensor& sin,
                          const at::Tensor& key_cache, const at::Tensor& value_cache, const at::Tensor& cache_position,
                          const std::optional<at::Tensor>& attention_mask, double eps, c10::string_view attention_plan,
                          c10::string_view block_plan, bool pdl) {
  // The two LayerNorms' parameters are the layer's own names; the blocks check and name the rest.
  const int64_t hidden = attention_block::check_qkv_weight(kOp, qkv_weight);
  check_vector(kOp, "attn_ln_weight", attn_ln_weight, hidden, "hidden");
  check_vector(kOp, "attn_ln_bias", attn_ln_bias, hidden, "hidden");
  check_vector(kOp, "mlp_ln_weight", mlp_ln_weight, hidden, "hidden");
  check_vector(kOp, "mlp_ln_bias", mlp_ln_bias, hidden, "hidden");
  // The MLP block's arguments are checked before the attention block writes the caches, so
  // a bad one leaves them as they were (attn_output will be shaped like hidden_states).
  // Traced with symbolic shapes, the blocks' fakes check instead.
  if (!hidden_states.unsafeGetTensorImpl()->has_symbolic_sizes_strides()) {
    mlp_block_residual::check_args({hidden_states, hidden_states, mlp_ln_weight, mlp_ln_bias, up_weight, up_bias,
                                    down_weight, down_bias, eps, block_plan, pdl});
  }
  gemv::parse_plan_pair(mlp_block_residual::kOp, std::string(block_plan.data(), block_plan.size()), "UP", "DOWN");
  const at::Tensor attn_output = attention_block::op_handle().call(
      hidden_states, attn_ln_weight, attn_ln_bias, qkv_weight, qkv_bias, dense_weight, dense_bias, cos, sin, key_cache,
      value_cache, cache_position, attention_mask, eps, attention_plan, pdl);
  return mlp_block_residual::op_handle().call(hidden_states, attn_output, mlp_ln_weight, mlp_ln_bias, up_weight,
                                              up_bias, down_weight, down_bias, eps, block_plan, pdl);
}

}  // namespace

TORCH_LIBRARY_IMPL(clusterfusion, CompositeImplicitAutograd, m) { m.impl("gpt_neox_layer", &gpt_neox_layer); }

}  // namespace clusterfusion::gpt_neox_layer
