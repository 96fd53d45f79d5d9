// CPU backend of clusterfusion::mlp_down_residual: the ATen reference, so code
// built on the op runs and is testable without a GPU. Launch tuning (plan, pdl)
// has nothing to tune here: a well-formed plan is accepted and ignored.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "../../host/backend.h"
#include "../../host/flat_kernel.h"
#include "checks.h"
#include "gemv/plan.h"
#include "reference.h"

namespace clusterfusion::mlp_down_residual {
namespace {

at::Tensor mlp_down_residual_cpu(const Args& a) {
  check_args(a);
  gemv::parse_plan(kOp, std::string(a.plan.data(), a.plan.size()));
  check_dtype_allowed(kOp, "weight", a.weight, kCpuDtypes, "CPU");
  return reference(a);
}

std::string unsupported_reason_cpu(const at::Tensor& weight) { return cpu_unsupported_reason(kOp, "weight", weight); }

std::vector<int64_t> plan_cpu(const at::Tensor& weight, int64_t, c10::string_view) {
  cpu_has_no_plan(kOp, "weight", weight);
}

}  // namespace

TORCH_LIBRARY_IMPL(clusterfusion, CPU, m) {
  impl_op(m, "mlp_down_residual", &FlatKernel<OpSignature>::of<Args, &mlp_down_residual_cpu>, &unsupported_reason_cpu,
          &plan_cpu);
}

}  // namespace clusterfusion::mlp_down_residual
