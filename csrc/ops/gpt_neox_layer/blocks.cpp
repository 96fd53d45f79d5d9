// clusterfusion.gpt_neox_layer through its two block ops, and the layer's own checks.
#include "blocks.h"

#include <string>

#include "../../host/checks.h"
#include "../attention_block/checks.h"
#include "../mlp_block_residual/checks.h"
#include "gemv/plan.h"

namespace clusterfusion::gpt_neox_layer {

void check_layer_args(const Args& a) {
  const std::string plan(a.layer_plan.data(), a.layer_plan.size());
  TORCH_CHECK_VALUE(plan == "auto" || plan == "one_launch" || plan == "blocks", kOp,
                    ": argument 'layer_plan' must be \"auto\" (the faster of the two below: today the blocks), "
                    "\"one_launch\" (the layer kernel where it serves) or \"blocks\" (the two block ops); got \"",
                    plan, "\"");
  const int64_t hidden = attention_block::check_qkv_weight(kOp, a.qkv_weight);
  check_vector(kOp, "attn_ln_weight", a.attn_ln_weight, hidden, "hidden");
  check_vector(kOp, "attn_ln_bias", a.attn_ln_bias, hidden, "hidden");
  check_vector(kOp, "mlp_ln_weight", a.mlp_ln_weight, hidden, "hidden");
  check_vector(kOp, "mlp_ln_bias", a.mlp_ln_bias, hidden, "hidden");
  // attn_output will be shaped like hidden_states. Traced with symbolic shapes, the blocks' fakes check instead.
  if (!a.hidden_states.unsafeGetTensorImpl()->has_symbolic_sizes_strides()) {
    mlp_block_residual::check_args({a.hidden_states, a.hidden_states, a.mlp_ln_weight, a.mlp_ln_bias, a.up_weight,
                                    a.up_bias, a.down_weight, a.down_bias, a.eps, a.block_plan, a.pdl});
  }
  gemv::parse_plan_pair(mlp_block_residual::kOp, std::string(a.block_plan.data(), a.block_plan.size()), "UP",
                        "DOWN");
}

at::Tensor through_blocks(const Args& a) {
  check_layer_args(a);
  const at::Tensor attn_output = attention_block::op_handle().call(
      a.hidden_states, a.attn_ln_weight, a.attn_ln_bias, a.qkv_weight, a.qkv_bias, a.dense_weight, a.dense_bias,
      a.cos, a.sin, a.key_cache, a.value_cache, a.cache_position, a.attention_mask, a.eps, a.attention_plan, a.pdl);
  return mlp_block_residual::op_handle().call(a.hidden_states, attn_output, a.mlp_ln_weight, a.mlp_ln_bias,
                                              a.up_weight, a.up_bias, a.down_weight, a.down_bias, a.eps, a.block_plan,
                                              a.pdl);
}

}  // namespace clusterfusion::gpt_neox_layer
