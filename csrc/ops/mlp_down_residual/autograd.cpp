// Autograd of clusterfusion::mlp_down_residual, for every backend. With
// out = hidden + attn + x @ W^T + b and g the output's gradient:
//   d hidden = d attn = g,  d x = g @ W,  d W = g^T @ x,  d b = sum of g over tokens.
// The forward redispatches below autograd; when nothing requires a gradient no
// graph node is made, so inference pays only the dispatch.
#include <torch/autograd.h>
#include <torch/library.h>

#include "op.h"

namespace clusterfusion::mlp_down_residual {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class MlpDownResidualFunction : public torch::autograd::Function<MlpDownResidualFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden_states, const at::Tensor& attn_output,
                            const at::Tensor& mlp_intermediate, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, c10::string_view plan, bool pdl) {
    ctx->save_for_backward({mlp_intermediate, weight});
    ctx->saved_data["has_bias"] = bias.has_value();
    at::AutoDispatchBelowADInplaceOrView guard;
    return op_handle().call(hidden_states, attn_output, mlp_intermediate, weight, bias, plan, pdl);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& grad = grads[0];
    const at::Tensor grad_2d = grad.reshape({-1, weight.size(0)});
    at::Tensor grad_x, grad_weight, grad_bias;
    if (ctx->needs_input_grad(2)) grad_x = grad_2d.mm(weight).reshape(x.sizes());
    if (ctx->needs_input_grad(3)) grad_weight = grad_2d.t().mm(x.reshape({-1, weight.size(1)}));
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(4)) grad_bias = grad_2d.sum(0);
    return {ctx->needs_input_grad(0) ? grad : at::Tensor(), ctx->needs_input_grad(1) ? grad : at::Tensor(),
            grad_x, grad_weight, grad_bias, at::Tensor(), at::Tensor()};
  }
};

at::Tensor mlp_down_residual_autograd(const at::Tensor& hidden_states, const at::Tensor& attn_output,
                                      const at::Tensor& mlp_intermediate, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& bias, c10::string_view plan, bool pdl) {
  return MlpDownResidualFunction::apply(hidden_states, attn_output, mlp_intermediate, weight, bias, plan, pdl);
}

}  // namespace

TORCH_LIBRARY_IMPL(clusterfusion, Autograd, m) {
  m.impl("mlp_down_residual", &mlp_down_residual_autograd);
}

}  // namespace clusterfusion::mlp_down_residual
