// CPU backend of clusterfusion::mlp_block_residual: the ATen reference (fp16 and
// bf16 computed in fp32 and rounded once), so code built on the op runs and is
// testable without a GPU. A well-formed plan is accepted and ignored.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "checks.h"
#include "gemv/plan.h"
#include "reference.h"

namespace clusterfusion::mlp_block_residual {
namespace {

const std::initializer_list<at::ScalarType> kCpuDtypes = {at::kHalf, at::kBFloat16, at::kFloat, at::kDouble};

at::Tensor mlp_block_residual_cpu(const at::Tensor& hidden_states, const at::Tensor& attn_output,
                                  const at::Tensor& ln_weight, const std::optional<at::Tensor>& ln_bias,
                                  const at::Tensor& up_weight, const std::optional<at::Tensor>& up_bias,
                                  const at::Tensor& down_weight, const std::optional<at::Tensor>& down_bias,
                                  double eps, c10::string_view plan, bool /*pdl*/) {
  check_args(hidden_states, attn_output, ln_weight, ln_bias, up_weight, up_bias, down_weight, down_bias, eps);
  gemv::parse_plan_pair(kOp, std::string(plan.data(), plan.size()), "UP", "DOWN");
  check_dtype_allowed(kOp, "up_weight", up_weight, kCpuDtypes, "CPU");
  const at::ScalarType dtype = up_weight.scalar_type();
  if (dtype == at::kFloat || dtype == at::kDouble) {
    return reference(hidden_states, attn_output, ln_weight, ln_bias, up_weight, up_bias, down_weight, down_bias, eps);
  }
  auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat); };
  auto f32_opt = [](const std::optional<at::Tensor>& t) {
    return t.has_value() ? std::optional<at::Tensor>(t->to(at::kFloat)) : std::nullopt;
  };
  return reference(f32(hidden_states), f32(attn_output), f32(ln_weight), f32_opt(ln_bias), f32(up_weight),
                   f32_opt(up_bias), f32(down_weight), f32_opt(down_bias), eps)
      .to(dtype);
}

std::string unsupported_reason_cpu(const at::Tensor& up_weight, const at::Tensor&) {
  return failure_message([&] { check_dtype_allowed(kOp, "up_weight", up_weight, kCpuDtypes, "CPU"); });
}

std::vector<int64_t> plan_cpu(const at::Tensor& up_weight, const at::Tensor&, int64_t, c10::string_view) {
  TORCH_CHECK_VALUE(false, kOp, ": launch plans exist for CUDA weights only; argument 'up_weight' is on ",
                    up_weight.device());
}

}  // namespace

TORCH_LIBRARY_IMPL(clusterfusion, CPU, m) {
  m.impl("mlp_block_residual", &mlp_block_residual_cpu);
  m.impl("mlp_block_residual_unsupported_reason", &unsupported_reason_cpu);
  m.impl("mlp_block_residual_plan", &plan_cpu);
}

}  // namespace clusterfusion::mlp_block_residual
