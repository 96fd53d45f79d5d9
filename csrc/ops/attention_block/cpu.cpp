// CPU backend of clusterfusion::attention_block: the ATen reference (fp16 and
// bf16 computed in fp32, the caches written in their own dtype), so code built
// on the op runs and is testable without a GPU. A well-formed plan is accepted
// and ignored.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "../../host/backend.h"
#include "../../host/flat_kernel.h"
#include "checks.h"
#include "gemv/plan.h"
#include "reference.h"

namespace clusterfusion::attention_block {
namespace {

at::Tensor attention_block_cpu(const Args& a) {
  const Shape shape = check_args(a);
  gemv::parse_plan_pair(kOp, std::string(a.plan.data(), a.plan.size()), "QKV", "DENSE");
  check_dtype_allowed(kOp, "qkv_weight", a.qkv_weight, kCpuDtypes, "CPU");
  return reference(a, shape, cpu_compute_dtype(a.qkv_weight.scalar_type()));
}

std::string unsupported_reason_cpu(const at::Tensor& qkv_weight, const at::Tensor&, int64_t) {
  return cpu_unsupported_reason(kOp, "qkv_weight", qkv_weight);
}

std::vector<int64_t> plan_cpu(const at::Tensor& qkv_weight, const at::Tensor&, c10::string_view) {
  cpu_has_no_plan(kOp, "qkv_weight", qkv_weight);
}

}  // namespace

TORCH_LIBRARY_IMPL(clusterfusion, CPU, m) {
  impl_op(m, "attention_block", &FlatKernel<OpSignature>::of<Args, &attention_block_cpu>, &unsupported_reason_cpu,
          &plan_cpu);
}

}  // namespace clusterfusion::attention_block
