// CPU backend of clusterfusion::mlp_block_residual: the ATen reference (fp16 and
// bf16 computed in fp32 and rounded once), so code built on the op runs and is
// testable without a GPU. A well-formed plan is accepted and ignored.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../../host/backend.h"
#include "../../host/flat_kernel.h"
#include "checks.h"
#include "gemv/plan.h"
#include "reference.h"

namespace clusterfusion::mlp_block_residual {
namespace {

at::Tensor mlp_block_residual_cpu(const Args& a) {
  check_args(a);
  gemv::parse_plan_pair(kOp, std::string(a.plan.data(), a.plan.size()), "UP", "DOWN");
  check_dtype_allowed(kOp, "up_weight", a.up_weight, kCpuDtypes, "CPU");
  return reference(a, cpu_compute_dtype(a.up_weight.scalar_type()));
}

std::string unsupported_reason_cpu(const at::Tensor& up_weight, const at::Tensor&) {
  return cpu_unsupported_reason(kOp, "up_weight", up_weight);
}

std::vector<int64_t> plan_cpu(const at::Tensor& up_weight, const at::Tensor&, int64_t, c10::string_view) {
  cpu_has_no_plan(kOp, "up_weight", up_weight);
}

}  // namespace

TORCH_LIBRARY_IMPL(clusterfusion, CPU, m) {
  impl_op(m, "mlp_block_residual", &FlatKernel<OpSignature>::of<Args, &mlp_block_residual_cpu>, &unsupported_reason_cpu,
          &plan_cpu);
}

}  // namespace clusterfusion::mlp_block_residual
