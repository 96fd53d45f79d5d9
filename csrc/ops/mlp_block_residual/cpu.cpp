// CPU backend of clusterfusion::mlp_block_residual: the ATen reference (fp16 and
// bf16 computed in fp32 and rounded once), so code built on the op runs and is
// testable without a GPU. A well-formed plan is accepted and ignored.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../../host/flat_kernel.h"
#include "checks.h"
#include "gemv/plan.h"
#include "reference.h"

namespace clusterfusion::mlp_block_residual {
namespace {

const std::initializer_list<at::ScalarType> kCpuDtypes = {at::kHalf, at::kBFloat16, at::kFloat, at::kDouble};

at::Tensor mlp_block_residual_cpu(const Args& a) {
  check_args(a);
  gemv::parse_plan_pair(kOp, std::string(a.plan.data(), a.plan.size()), "UP", "DOWN");
  check_dtype_allowed(kOp, "up_weight", a.up_weight, kCpuDtypes, "CPU");
  const at::ScalarType dtype = a.up_weight.scalar_type();
  return reference(a, dtype == at::kFloat || dtype == at::kDouble ? dtype : at::kFloat);
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
  m.impl("mlp_block_residual", &FlatKernel<OpSignature>::of<Args, &mlp_block_residual_cpu>);
  m.impl("mlp_block_residual_unsupported_reason", &unsupported_reason_cpu);
  m.impl("mlp_block_residual_plan", &plan_cpu);
}

}  // namespace clusterfusion::mlp_block_residual
